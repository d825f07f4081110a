"""Versioned SQL migrations kept in ``cgm/migrations``, applied idempotently.

Files are ``NNNN_name.sql``, applied in order, each in its own transaction, under an advisory
lock so that several collectors starting at once upgrade the schema exactly once. A file whose
first line is ``-- requires: timescaledb`` runs only where that extension can be created;
elsewhere it is recorded as skipped and applied by a later upgrade once the extension
appears, so one schema serves plain PostgreSQL and TimescaleDB.

Settings reach SQL as ``cgm.*`` session variables (``current_setting('cgm.compress_after')``),
never by string templating.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources

import psycopg

from cgm.config import Settings

log = logging.getLogger(__name__)

LOCK_KEY = 0x43474D5F4D4947  # "CGM_MIG"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """The schema cannot be brought up to date safely (e.g. an applied migration changed)."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str
    requires_timescale: bool

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True)
class UpgradeResult:
    applied: list[str]
    skipped: list[str]
    timescale: bool
    warning: str | None = None


def migrations() -> list[Migration]:
    found = []
    for entry in resources.files("cgm.migrations").iterdir():
        m = _NAME.match(entry.name)
        if not m:
            continue
        sql = entry.read_text(encoding="utf-8")
        first = sql.splitlines()[0].strip() if sql else ""
        found.append(Migration(int(m[1]), m[2], sql, first == "-- requires: timescaledb"))
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if len(versions) != len(set(versions)):
        raise MigrationError(f"duplicate migration versions in {versions}")
    return found


def pending(url: str) -> list[str]:
    """Migrations not yet applied (Timescale-only ones count once the extension is there)."""
    with psycopg.connect(url) as conn:
        exists = conn.execute("SELECT to_regclass('schema_migration')").fetchone()
        done = (
            {v for (v,) in conn.execute("SELECT version FROM schema_migration")}
            if exists and exists[0]
            else set()
        )
    return [
        f"{m.version:04d}_{m.name}"
        for m in migrations()
        if m.version not in done
    ]


def _preloaded(setting: str) -> bool:
    """Whether ``shared_preload_libraries`` names timescaledb (quoted or not, any path)."""
    names = (part.strip().strip('"').rsplit("/", 1)[-1] for part in setting.split(","))
    return any(name in ("timescaledb", "timescaledb.so") for name in names)


def _timescale_available(url: str) -> tuple[bool, str | None]:
    """Whether TimescaleDB is usable here, and a warning when it is half-installed.

    Checked on a connection of its own: when the extension is installed but not preloaded,
    ``CREATE EXTENSION`` fails with a FATAL error that ends the session, and the upgrade must
    go on (with plain tables) on a connection that is still alive.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute(
            "SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"
        ).fetchone():
            return True, None
        if conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
        ).fetchone() is None:
            return False, None
        preload = conn.execute("SHOW shared_preload_libraries").fetchone()
        if not _preloaded(preload[0] if preload else ""):
            return False, (
                "timescaledb is installed on the server but not in shared_preload_libraries; "
                "using plain PostgreSQL tables. Add timescaledb to shared_preload_libraries, "
                "restart PostgreSQL and run `cgm db upgrade` again to convert them"
            )
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except psycopg.Error as exc:
        return False, (
            f"timescaledb is installed but cannot be enabled ({exc}); "
            "using plain PostgreSQL tables"
        )
    return True, None


def _set_variables(conn: psycopg.Connection, settings: Settings) -> None:
    conn.execute(
        "SELECT set_config('cgm.compress_after', %s, false)",
        (f"{settings.compress_after_days} days",),
    )


def upgrade(url: str, settings: Settings) -> UpgradeResult:
    """Bring the schema at ``url`` up to date; safe to run any number of times."""
    applied: list[str] = []
    skipped: list[str] = []
    with psycopg.connect(url) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        conn.commit()
        try:
            conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migration (
                       version integer PRIMARY KEY,
                       name text NOT NULL,
                       checksum text NOT NULL,
                       skipped boolean NOT NULL DEFAULT false,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            conn.commit()
            timescale, warning = _timescale_available(url)
            if warning:
                log.warning("%s", warning)
            _set_variables(conn, settings)
            done = {
                v: (checksum, was_skipped)
                for v, checksum, was_skipped in conn.execute(
                    "SELECT version, checksum, skipped FROM schema_migration"
                )
            }
            conn.commit()
            for mig in migrations():
                label = f"{mig.version:04d}_{mig.name}"
                if mig.version in done:
                    checksum, was_skipped = done[mig.version]
                    if not was_skipped and checksum != mig.checksum:
                        raise MigrationError(
                            f"migration {label} was changed after it was applied; "
                            "add a new migration instead of editing an old one"
                        )
                    if not (was_skipped and mig.requires_timescale and timescale):
                        if was_skipped:
                            skipped.append(label)
                        continue
                if mig.requires_timescale and not timescale:
                    if mig.version not in done:
                        conn.execute(
                            "INSERT INTO schema_migration (version, name, checksum, skipped)"
                            " VALUES (%s, %s, %s, true)",
                            (mig.version, mig.name, mig.checksum),
                        )
                        conn.commit()
                    skipped.append(label)
                    continue
                with conn.transaction():
                    conn.execute(mig.sql)
                    conn.execute(
                        """INSERT INTO schema_migration (version, name, checksum, skipped)
                           VALUES (%s, %s, %s, false)
                           ON CONFLICT (version) DO UPDATE
                           SET checksum = EXCLUDED.checksum, skipped = false,
                               applied_at = now()""",
                        (mig.version, mig.name, mig.checksum),
                    )
                applied.append(label)
                log.info("applied migration %s", label)
            apply_policies(conn, settings, timescale)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
            conn.commit()
    return UpgradeResult(applied, skipped, timescale, warning)


def apply_policies(conn: psycopg.Connection, settings: Settings, timescale: bool) -> None:
    """Retention follows configuration, so it is set at every upgrade, not in a migration.

    Only TimescaleDB drops old chunks; on plain PostgreSQL nothing is ever deleted.
    """
    if not timescale:
        return
    with conn.transaction():
        for table in ("reading", "settled_reading"):
            conn.execute("SELECT remove_retention_policy(%s, if_exists => true)", (table,))
            if settings.retention_years is not None:
                days = int(settings.retention_years * 366)
                conn.execute(
                    "SELECT add_retention_policy(%s, drop_after => %s::interval)",
                    (table, f"{days} days"),
                )
