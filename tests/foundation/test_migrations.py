"""Schema migrations: from empty, re-run, concurrent, and refusal of edited history."""

from __future__ import annotations

import threading
from collections.abc import Callable

import psycopg
import pytest

from cgm.config import Settings
from cgm.migrate import MigrationError, migrations, upgrade

EXPECTED_TABLES = {
    "schema_migration",
    "frontier",
    "meter",
    "meter_credential",
    "channel",
    "reading",
    "ingest_batch",
    "settled_reading",
    "audit_log",
}


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {r[0] for r in rows}


def test_upgrade_from_empty_creates_schema_and_rerun_changes_nothing(
    new_database: Callable[[], str],
) -> None:
    url = new_database()
    first = upgrade(url, Settings(database_url=url))
    every = [f"{m.version:04d}_{m.name}" for m in migrations()]
    plain = [f"{m.version:04d}_{m.name}" for m in migrations() if not m.requires_timescale]
    assert EXPECTED_TABLES <= _tables(url)
    if first.timescale:  # TimescaleDB: everything applies, nothing waits
        assert first.applied == every and first.skipped == []
    else:  # plain PostgreSQL: the Timescale migrations wait
        assert first.applied == plain and first.skipped == ["0004_timescale"]

    with psycopg.connect(url) as conn:
        before = conn.execute("SELECT version, applied_at FROM schema_migration").fetchall()
    second = upgrade(url, Settings(database_url=url))
    assert second.applied == []
    with psycopg.connect(url) as conn:
        after = conn.execute("SELECT version, applied_at FROM schema_migration").fetchall()
    assert sorted(before) == sorted(after)


def test_concurrent_upgrades_apply_each_migration_once(new_database: Callable[[], str]) -> None:
    url = new_database()
    results = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(upgrade(url, Settings(database_url=url)))
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    applied = [name for r in results for name in r.applied]
    timescale = results[0].timescale
    assert (
        len(applied)
        == len(set(applied))
        == len([m for m in migrations() if timescale or not m.requires_timescale])
    )


def test_edited_migration_is_refused(new_database: Callable[[], str]) -> None:
    url = new_database()
    upgrade(url, Settings(database_url=url))
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE schema_migration SET checksum = 'x' WHERE version = 1")
    with pytest.raises(MigrationError, match="was changed after it was applied"):
        upgrade(url, Settings(database_url=url))


def test_readings_key_includes_time_column(db_url: str) -> None:
    """Each table's unique key holds the time column (TimescaleDB partitions by it);
    settled_reading's is led by the local day (migration 0240)."""
    with psycopg.connect(db_url) as conn:
        for table, key in (("reading", "reading_pkey"), ("settled_reading", "settled_reading_key")):
            cols = conn.execute(
                """SELECT a.attname FROM pg_index i
                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                   WHERE i.indrelid = %s::regclass AND i.indexrelid = %s::regclass
                     AND i.indisunique""",
                (table, key),
            ).fetchall()
            assert "interval_start" in {c[0] for c in cols}
        columns = conn.execute(
            "SELECT pg_get_indexdef('settled_reading_key'::regclass, k, true)"
            " FROM generate_series(1, 4) k ORDER BY k"
        ).fetchall()
        day = "(((interval_start AT TIME ZONE 'UTC'::text) + '-05:00:00'::interval)::date)"
        assert [c for (c,) in columns] == [day, "frontier_id", "channel", "interval_start"]
        # the same as settled_local_day, which readers name
        (same,) = conn.execute(
            f"SELECT bool_and({day.replace('interval_start', 't')} = settled_local_day(t))"
            " FROM generate_series('2026-01-01 04:00+00'::timestamptz,"
            " '2026-01-03 06:00+00', '1 hour') t"
        ).fetchone()
        assert same


def test_audit_log_is_append_only(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO audit_log (table_name, op, actor) VALUES ('test', 'I', 'pytest')")
        conn.commit()
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute("DELETE FROM audit_log WHERE table_name = 'test'")
