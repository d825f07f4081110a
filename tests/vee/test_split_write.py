"""A large VEE run settled and written in parts by frontier, each on a connection of its own
(cgm.vee.run._settle_in_parts): the same settled values as one connection, each part
committed whole, re-runs unchanged."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime

import psycopg
import pytest

from cgm.localtime import day_bounds
from cgm.vee import VeeConfig, run_vee_pairs
from cgm.vee import run as vee_run
from tests.vee.conftest import Frontier, load, make_frontier, put, settled

DAY = date(2026, 4, 14)  # a Tuesday
NOW = datetime(2026, 6, 1, tzinfo=UTC)


async def fleet(conn: psycopg.AsyncConnection) -> list[Frontier]:
    """Four frontiers: clean, a principal gap (backup), a gap in both (estimate), a spike."""
    out = []
    for k in range(4):
        f = await make_frontier(conn, seed=k + 1)
        raw = load(f, DAY)
        p = raw.copy()
        if k == 3:
            p[9] *= 20
        await put(conn, f.principal, DAY, p, skip=[4, 5] if k in (1, 2) else [])
        await put(conn, f.backup, DAY, raw, skip=[5] if k == 2 else [])
        out.append(f)
    return out


async def outcome(conn: psycopg.AsyncConnection, fs: list[Frontier]) -> list[list[tuple]]:
    return [[r[:5] for r in await settled(conn, f, DAY)] for f in fs]


async def batches(conn: psycopg.AsyncConnection) -> int:
    cur = await conn.execute("SELECT count(*) FROM ingest_batch WHERE target = 'settled_reading'")
    return (await cur.fetchone())[0]  # type: ignore[index]


async def test_split_write_settles_as_one_connection_does(conn, monkeypatch) -> None:
    config = VeeConfig()
    one = await fleet(conn)
    s1 = await run_vee_pairs(conn, [(f.id, DAY) for f in one], config=config, now=NOW)
    split = await fleet(conn)
    monkeypatch.setattr(vee_run, "_SPLIT_AFTER", 1)
    before = await batches(conn)
    s2 = await run_vee_pairs(conn, [(f.id, DAY) for f in split], config=config, now=NOW)
    assert await batches(conn) == before + vee_run._PARTS  # one batch per part (frontier)
    assert s2.written == s1.written == 96 and s2.by_source == s1.by_source
    assert s2.by_source["estimate"] == 1 and s2.by_source["backup"] >= 1
    # Same values, sources, methods, flags and details (the meter ids differ by frontier).
    a, b = await outcome(conn, one), await outcome(conn, split)
    for ra, rb in zip(a, b, strict=True):
        assert [r[:4] for r in ra] == [r[:4] for r in rb]
        assert [sorted(r[4]) for r in ra] == [sorted(r[4]) for r in rb]
    # The run's own transaction recorded the inputs after the parts committed: unchanged.
    again = await run_vee_pairs(conn, [(f.id, DAY) for f in split], config=config, now=NOW)
    assert again.written == 0 and await batches(conn) == before + vee_run._PARTS


async def test_a_failed_part_leaves_whole_frontier_days(conn, monkeypatch) -> None:
    fs = await fleet(conn)
    monkeypatch.setattr(vee_run, "_SPLIT_AFTER", 1)
    real = vee_run.write_settled
    calls = []

    async def second_part_fails(wconn, rows, *, measured, **kw):  # noqa: ANN001, ANN202
        calls.append(1)
        if len(calls) == 2:
            raise psycopg.OperationalError("connection lost")
        return await real(wconn, rows, measured=measured, **kw)

    monkeypatch.setattr(vee_run, "write_settled", second_part_fails)
    with pytest.raises(psycopg.OperationalError):
        await run_vee_pairs(conn, [(f.id, DAY) for f in fs], now=NOW)
    await conn.rollback()
    counts = [len(await settled(conn, f, DAY)) for f in fs]
    assert sorted(set(counts)) in ([0, 24], [0], [24])  # whole days or nothing
    assert 0 in counts
    monkeypatch.setattr(vee_run, "write_settled", real)
    s = await run_vee_pairs(conn, [(f.id, DAY) for f in fs], now=NOW)
    assert [len(await settled(conn, f, DAY)) for f in fs] == [24] * 4
    assert s.written == 96 - (counts.count(24) * 24)


# A day no other test settles, later than all of theirs: statistics that reach it come from
# an ANALYZE after it was written.
LATE_DAY = date(2034, 6, 13)


async def known_until(conn: psycopg.AsyncConnection) -> datetime | None:
    """The latest interval start the planner's statistics of settled_reading know of (its
    own and, on TimescaleDB, its chunks')."""
    cur = await conn.execute(
        """WITH t AS (SELECT 'settled_reading'::regclass AS r UNION ALL
                      SELECT inhrelid::regclass FROM pg_inherits
                      WHERE inhparent = 'settled_reading'::regclass)
           SELECT max(x) FROM pg_stats s JOIN pg_class c ON c.relname = s.tablename
             JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = s.schemaname
             JOIN t ON t.r = c.oid,
             unnest(coalesce(s.histogram_bounds::text::timestamptz[], '{}')
                    || coalesce(s.most_common_vals::text::timestamptz[], '{}')) x
           WHERE s.attname = 'interval_start'"""
    )
    return (await cur.fetchone())[0]  # type: ignore[index]


async def late_fleet(conn: psycopg.AsyncConnection) -> list[Frontier]:
    fs = [await make_frontier(conn, seed=k + 1) for k in range(2)]
    for f in fs:
        await put(conn, f.principal, LATE_DAY, load(f, LATE_DAY))
        await put(conn, f.backup, LATE_DAY, load(f, LATE_DAY))
    await conn.execute("ANALYZE settled_reading")
    await conn.commit()
    return fs


async def test_a_large_run_returns_with_statistics_that_know_its_day(conn, monkeypatch) -> None:
    """The day's statistics are refreshed beside the run's last steps, and done when it
    returns: queries on the day are not planned as if it were empty."""
    fs = await late_fleet(conn)
    start, _ = day_bounds(LATE_DAY)
    known = await known_until(conn)
    assert known is None or known < start
    monkeypatch.setattr(vee_run, "_SPLIT_AFTER", 1)
    monkeypatch.setattr(vee_run, "ANALYZE_AFTER", 1)
    s = await run_vee_pairs(
        conn, [(f.id, LATE_DAY) for f in fs], now=datetime(2034, 7, 1, tzinfo=UTC)
    )
    assert s.written == 48
    await conn.commit()
    assert await known_until(conn) >= start


async def test_statistics_that_fail_to_refresh_leave_the_run_whole(
    conn, monkeypatch, caplog
) -> None:
    """Statistics are housekeeping: a failed ANALYZE is a warning, the run's values and its
    record stand (the next run finds the day unchanged)."""
    fs = await late_fleet(conn)
    monkeypatch.setattr(vee_run, "_SPLIT_AFTER", 1)
    monkeypatch.setattr(vee_run, "ANALYZE_AFTER", 1)

    async def fails(*_a: object) -> None:
        raise psycopg.errors.QueryCanceled("canceling statement due to statement timeout")

    monkeypatch.setattr(vee_run, "analyze_settled", fails)
    pairs = [(f.id, LATE_DAY) for f in fs]
    now = datetime(2034, 7, 1, tzinfo=UTC)
    with caplog.at_level(logging.WARNING, logger="cgm.vee.run"):
        s = await run_vee_pairs(conn, pairs, now=now)
    assert s.written == 48
    assert "statistics of settled_reading not refreshed" in caplog.text
    assert [len(await settled(conn, f, LATE_DAY)) for f in fs] == [24, 24]
    again = await run_vee_pairs(conn, pairs, now=now)
    assert again.written == 0 and again.skipped == 2
