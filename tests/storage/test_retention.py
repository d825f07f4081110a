"""Retention leaves no silent holes: on TimescaleDB every chunk the retention job drops is
recorded in the (chained) audit log with its range, row count, time and job; nothing under
two years is ever dropped. Plain PostgreSQL never drops readings at all."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest

from cgm.config import Settings
from cgm.localtime import local_day
from cgm.migrate import upgrade
from cgm.storage import Reading, SettledValue, write_readings, write_settled
from cgm.storage.audit import verify
from tests.storage.conftest import make_frontiers

NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
OLD = NOW - timedelta(days=3 * 366)
RECENT = NOW - timedelta(days=400)


async def _seed(url: str) -> int:
    (_, mid), = await make_frontiers(url, 1)
    async with await psycopg.AsyncConnection.connect(url) as conn:
        rows = [Reading(mid, 1, t + timedelta(hours=h), 1.0, 0, NOW)
                for t in (OLD, RECENT) for h in range(24)]
        await write_readings(conn, rows, source="test", actor="t")
    return mid


def _days(conn: psycopg.Connection, mid: int) -> set[date]:
    rows = conn.execute("SELECT day FROM reading_day WHERE meter_id = %s", (mid,)).fetchall()
    return {d for (d,) in rows}


def _local_days(start: datetime) -> set[date]:
    return {local_day(start + timedelta(hours=h)) for h in range(24)}


def _count(url: str, mid: int, before: datetime) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT count(*) FROM reading WHERE meter_id = %s AND interval_start < %s",
            (mid, before),
        ).fetchone()[0]


async def test_retention_drops_are_recorded(new_database: Callable[[], str]) -> None:
    url = new_database()
    result = upgrade(url, Settings(database_url=url, retention_years=2))
    mid = await _seed(url)
    with psycopg.connect(url, autocommit=True) as conn:
        if not result.timescale:
            # Plain PostgreSQL: no job, nothing dropped, nothing to record.
            assert conn.execute(
                "SELECT to_regclass('timescaledb_information.jobs')"
            ).fetchone() == (None,)
            assert _count(url, mid, RECENT) == 24
            assert conn.execute("SELECT count(*) FROM retention_drop").fetchone() == (0,)
            return
        jobs = conn.execute(
            "SELECT job_id, config FROM timescaledb_information.jobs"
            " WHERE proc_name = 'cgm_retention' ORDER BY config ->> 'hypertable'"
        ).fetchall()
        assert [c["hypertable"] for _, c in jobs] == ["reading", "settled_reading"]
        assert not conn.execute(
            "SELECT 1 FROM timescaledb_information.jobs WHERE proc_name = 'policy_retention'"
        ).fetchone()
        job = next(j for j, c in jobs if c["hypertable"] == "reading")
        assert _days(conn, mid) == _local_days(OLD) | _local_days(RECENT)
        conn.execute("CALL run_job(%s)", (job,))
        # reading_day follows: the dropped days' rows go with their readings.
        assert _days(conn, mid) == _local_days(RECENT)
        drops = conn.execute(
            "SELECT table_name, range_start, range_end, row_count, policy FROM retention_drop"
        ).fetchall()
    assert _count(url, mid, RECENT) == 0  # the 3-year-old day is gone
    assert _count(url, mid, NOW) == 24  # the 400-day-old day stays
    assert len(drops) == 1
    table, start, end, rows, policy = drops[0]
    assert table == "reading" and start <= OLD and OLD + timedelta(hours=23) < end
    assert end <= NOW - timedelta(days=2 * 366)
    assert rows == 24
    assert policy == f"retention job {job}: drop_after {2 * 366} days"
    assert verify(url).ok


@pytest.mark.parametrize("drop_after", ["1 year", "729 days", "-1 day"])
def test_retention_job_refuses_less_than_two_years(db_url: str, drop_after: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn, pytest.raises(
        psycopg.errors.RaiseException, match="below the 2-year minimum"
    ):
        conn.execute(
            "CALL cgm_retention(0, jsonb_build_object('hypertable', 'reading',"
            " 'drop_after', %s::text))",
            (drop_after,),
        )


async def test_settled_day_follows_settled_reading_retention(
    new_database: Callable[[], str],
) -> None:
    url = new_database()
    result = upgrade(url, Settings(database_url=url, retention_years=2))
    ((fid, _),) = await make_frontiers(url, 1)
    async with await psycopg.AsyncConnection.connect(url) as conn:
        rows = [
            SettledValue(fid, 1, t + timedelta(hours=h), 1.0, "principal")
            for t in (OLD, RECENT)
            for h in range(30)
        ]
        await write_settled(conn, rows, actor="t")
        await conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        days = "SELECT day, cardinality(array_remove(source, 0::smallint)) FROM settled_day"
        spanned = {local_day(r.interval_start) for r in rows}
        assert len(conn.execute(days).fetchall()) == len(spanned)
        if not result.timescale:
            # Plain PostgreSQL drops nothing (no chunks, no job): both keep every day.
            assert conn.execute(
                "SELECT to_regclass('timescaledb_information.jobs')"
            ).fetchone() == (None,)
            kept = conn.execute(days + " ORDER BY day").fetchall()
            assert sum(n for _, n in kept) == len(rows)
            assert [d for d, _ in kept] == sorted(spanned)
            return
        (job,) = conn.execute(
            "SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = 'cgm_retention'"
            " AND config ->> 'hypertable' = 'settled_reading'"
        ).fetchone()
        conn.execute("CALL run_job(%s)", (job,))
        left = conn.execute(
            "SELECT count(*) FROM settled_reading WHERE frontier_id = %s", (fid,)
        ).fetchone()[0]
        assert left == 30  # the recent ones
        kept = conn.execute(days + " ORDER BY day").fetchall()
    # What settled_day holds is what settled_reading still holds, nothing older.
    assert sum(n for _, n in kept) == 30
    assert [d for d, _ in kept] == sorted({local_day(r.interval_start) for r in rows[30:]})
