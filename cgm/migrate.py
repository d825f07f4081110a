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
from psycopg import sql

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
    return [f"{m.version:04d}_{m.name}" for m in migrations() if m.version not in done]


def _may_change_schema(conn: psycopg.Connection) -> bool:
    """A superuser, or a member of the role that owns the schema (any role on a new one)."""
    row = conn.execute(
        """SELECT r.rolsuper OR c.oid IS NULL OR pg_has_role(current_user, c.relowner, 'MEMBER')
           FROM pg_roles r LEFT JOIN pg_class c ON c.oid = to_regclass('schema_migration')
           WHERE r.rolname = current_user"""
    ).fetchone()
    conn.rollback()
    return bool(row and row[0])


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
        if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone():
            return True, None
        if (
            conn.execute(
                "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
            ).fetchone()
            is None
        ):
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
            f"timescaledb is installed but cannot be enabled ({exc}); using plain PostgreSQL tables"
        )
    return True, None


def _set_variables(conn: psycopg.Connection, settings: Settings) -> None:
    conn.execute(
        "SELECT set_config('cgm.compress_after', %s, false)",
        (f"{settings.compress_after_days} days",),
    )


def upgrade(url: str, settings: Settings) -> UpgradeResult:
    """Bring the schema at ``url`` up to date; safe to run any number of times.

    Connected as a role without schema rights (the service role), it only checks: nothing
    pending is fine (``cgm run`` starts), anything pending is a MigrationError.
    """
    applied: list[str] = []
    skipped: list[str] = []
    with psycopg.connect(url) as conn:
        if not _may_change_schema(conn):
            conn.close()
            waiting = pending(url)
            if waiting:
                raise MigrationError(
                    f"the database schema is behind (pending: {', '.join(waiting)}) and this "
                    "role may not change it; run `cgm db upgrade` as the schema owner or an "
                    "administrator"
                )
            with psycopg.connect(url) as check:
                timescale = check.execute(
                    "SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"
                ).fetchone() is not None
            return UpgradeResult([], [], timescale)
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
            apply_privileges(conn, settings)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
            conn.commit()
    return UpgradeResult(applied, skipped, timescale, warning)


def apply_policies(conn: psycopg.Connection, settings: Settings, timescale: bool) -> None:
    """Retention follows configuration, so it is set at every upgrade, not in a migration.

    Only TimescaleDB drops old chunks, through the ``cgm_retention`` job (migration 0043),
    which records every chunk it drops in the audit log; TimescaleDB's own retention policy
    (used before) is removed. On plain PostgreSQL nothing is ever deleted.
    """
    if not timescale:
        return
    with conn.transaction():
        for table in ("reading", "settled_reading"):
            conn.execute("SELECT remove_retention_policy(%s, if_exists => true)", (table,))
            conn.execute(
                "SELECT delete_job(job_id) FROM timescaledb_information.jobs"
                " WHERE proc_name = 'cgm_retention' AND config ->> 'hypertable' = %s",
                (table,),
            )
            if settings.retention_years is not None:
                days = int(settings.retention_years * 366)
                conn.execute(
                    "SELECT add_job('cgm_retention', interval '1 day',"
                    " config => jsonb_build_object('hypertable', %s::text,"
                    " 'drop_after', %s::text))",
                    (table, f"{days} days"),
                )


# Tables the service may read and append to but never change or delete rows of.
_APPEND_ONLY = ("audit_log", "audit_chain", "schema_migration")
_NO_DELETE = ("reading", "settled_reading", "settled_day", "ingest_batch")


def apply_privileges(conn: psycopg.Connection, settings: Settings) -> None:
    """Create the owner and service roles and (re)apply ownership and grants.

    Roles are cluster-wide while the schema is per database, so this is idempotent and safe
    when many databases on one server upgrade at once. The owner role owns every
    cgm object (LOGIN, for TimescaleDB's jobs, but it is not what the service connects as);
    the service role (what ``cgm run`` connects as) gets row privileges only:
    no TRUNCATE, no ownership (so no ALTER, no trigger control, no ``drop_chunks``), no
    write on the audit tables, no DELETE of readings. ``session_replication_role`` needs a
    superuser. Run at every upgrade so objects of later migrations are covered too.
    """
    owner, service = settings.db_owner_role, settings.db_service_role
    with conn.transaction():
        # LOGIN: TimescaleDB runs a hypertable's background jobs (compression, continuous
        # aggregates) as its owner. Neither role gets a password here: set one (ALTER ROLE
        # ... PASSWORD) for the role the service logs in as.
        _ensure_role(conn, owner, login=True)
        _ensure_role(conn, service, login=True)
        super_, member = conn.execute(
            "SELECT rolsuper, pg_has_role(current_user, %s, 'MEMBER') FROM pg_roles"
            " WHERE rolname = current_user",
            (owner,),
        ).fetchone()  # type: ignore[misc]
        if not super_ and not member:
            conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(owner)))
        o, s = sql.Identifier(owner), sql.Identifier(service)
        objects = conn.execute(
            """SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                                     WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END,
                      c.relname
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
                 AND c.relowner <> %s::regrole
                 AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                                 AND d.objid = c.oid AND d.deptype IN ('e', 'i', 'a'))
               ORDER BY c.relkind = 'S', c.relname""",
            (owner,),
        ).fetchall()
        caggs = _continuous_aggregates(conn)
        for kind, name in objects:
            if name in caggs:
                kind = "MATERIALIZED VIEW"  # TimescaleDB refuses ALTER VIEW on these
            conn.execute(
                sql.SQL("ALTER {} {} OWNER TO {}").format(
                    sql.SQL(kind), sql.Identifier(name), o
                )
            )
        functions = conn.execute(
            """SELECT p.oid::regprocedure::text FROM pg_proc p
               JOIN pg_namespace n ON n.oid = p.pronamespace
               WHERE n.nspname = current_schema() AND p.proowner <> %s::regrole
                 AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                                 AND d.objid = p.oid AND d.deptype = 'e')""",
            (owner,),
        ).fetchall()
        procedures = _procedures(conn)
        for (signature,) in functions:
            kind = "PROCEDURE" if signature in procedures else "FUNCTION"
            conn.execute(
                sql.SQL("ALTER {} {} OWNER TO {}").format(sql.SQL(kind), sql.SQL(signature), o)
            )
        db = sql.Identifier(conn.info.dbname)
        for statement in (
            "GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {s}",
            "GRANT USAGE ON SCHEMA public TO {s}",
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {s}",
            "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {s}",
            "REVOKE TRUNCATE, REFERENCES, TRIGGER ON ALL TABLES IN SCHEMA public FROM {s}",
        ):
            conn.execute(sql.SQL(statement).format(db=db, s=s))
        for table in _APPEND_ONLY:
            conn.execute(
                sql.SQL("REVOKE INSERT, UPDATE, DELETE ON {} FROM {}").format(
                    sql.Identifier(table), s
                )
            )
        for table in _NO_DELETE:
            conn.execute(
                sql.SQL("REVOKE DELETE ON {} FROM {}").format(sql.Identifier(table), s)
            )


def _continuous_aggregates(conn: psycopg.Connection) -> set[str]:
    if not conn.execute(
        "SELECT to_regclass('timescaledb_information.continuous_aggregates')"
    ).fetchone()[0]:  # type: ignore[index]
        return set()
    return {
        r[0]
        for r in conn.execute(
            "SELECT view_name FROM timescaledb_information.continuous_aggregates"
            " WHERE view_schema = current_schema()"
        )
    }


def _procedures(conn: psycopg.Connection) -> set[str]:
    return {
        r[0]
        for r in conn.execute(
            "SELECT oid::regprocedure::text FROM pg_proc WHERE prokind = 'p'"
            " AND pronamespace = current_schema()::regnamespace"
        )
    }


def _ensure_role(conn: psycopg.Connection, name: str, *, login: bool) -> None:
    """CREATE ROLE unless it exists; a concurrent creator elsewhere on the server is fine."""
    found = conn.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
    if found:
        if login and not found[0]:
            conn.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(name)))
        return
    try:
        with conn.transaction():
            conn.execute(
                sql.SQL("CREATE ROLE {} {}").format(
                    sql.Identifier(name), sql.SQL("LOGIN" if login else "NOLOGIN")
                )
            )
    except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
        pass
    except psycopg.errors.InsufficientPrivilege as exc:
        raise MigrationError(
            f"role {name} does not exist and this user cannot create it ({exc}); "
            f"create it (CREATE ROLE {name} {'LOGIN' if login else 'NOLOGIN'}) or run "
            "`cgm db upgrade` as a user with CREATEROLE"
        ) from None
