"""A large VEE write split over connections of its own (cgm.vee.run._write): the same
settled values as one connection, each part committed whole, re-runs unchanged."""

from __future__ import annotations

from datetime import UTC, date, datetime

import psycopg
import pytest

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
    assert await batches(conn) == before + vee_run._WRITERS  # one batch per connection
    assert s2.written == s1.written == 96 and s2.by_source == s1.by_source
    assert s2.by_source["estimate"] == 1 and s2.by_source["backup"] >= 1
    # Same values, sources, methods, flags and details (the meter ids differ by frontier).
    a, b = await outcome(conn, one), await outcome(conn, split)
    for ra, rb in zip(a, b, strict=True):
        assert [r[:4] for r in ra] == [r[:4] for r in rb]
        assert [sorted(r[4]) for r in ra] == [sorted(r[4]) for r in rb]
    # The run's own transaction recorded the inputs after the parts committed: unchanged.
    again = await run_vee_pairs(conn, [(f.id, DAY) for f in split], config=config, now=NOW)
    assert again.written == 0 and await batches(conn) == before + vee_run._WRITERS


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
