"""settled_day says what settled_reading says, after any mix of writes: first settles of
whole and partial days, re-settles with new versions, manual edits, automatic writes over a
manual hour, estimates, batches across days, and the rebuild that backfills it."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import psycopg

from cgm.localtime import hour_starts
from cgm.storage import SettledValue, read_settled_days, write_settled
from cgm.storage.settled import measured_array
from cgm.vee import VeeConfig, run_vee
from cgm.vee.edit import edit_settled
from tests.vee.conftest import Frontier, load, make_frontier, put

DAY = date(2026, 3, 10)
NOW = datetime(2026, 6, 1, tzinfo=UTC)
CODES = {"principal": 1, "backup": 2, "estimate": 3, "manual": 4}
CHANNELS = ("active_import", "reactive_import")


async def assert_days_match(conn: psycopg.AsyncConnection, fids: list[int]) -> int:
    """Every settled_day row of ``fids`` equals the day's settled_reading rows, and every
    day with settled values has its row. Returns the number of days compared."""
    cur = await conn.execute(
        """SELECT frontier_id, channel, interval_start, value, source, method, flags
           FROM settled_reading WHERE frontier_id = ANY(%s)""",
        (fids,),
    )
    expected: dict[tuple[int, int, date], dict[str, list]] = {}
    for fid, ch, t, value, source, method, flags in await cur.fetchall():
        local = t.astimezone(UTC) - timedelta(hours=5)
        day = expected.setdefault(
            (fid, ch, local.date()),
            {"value": [None] * 24, "source": [0] * 24, "flags": [0] * 24, "method": [None] * 24},
        )
        h = local.hour
        day["value"][h], day["source"][h] = value, CODES[source]
        day["flags"][h], day["method"][h] = flags, method
    got = await read_settled_days(conn, fids, date(2000, 1, 1), date(2100, 1, 1))
    seen = set()
    for i in range(len(got)):
        key = (int(got.frontier_id[i]), int(got.channel[i]), got.day[i].astype(date))
        seen.add(key)
        assert key in expected, f"settled_day row {key} without settled values"
        e = expected[key]
        want = np.array([np.nan if v is None else v for v in e["value"]])
        np.testing.assert_array_equal(got.value[i], want, err_msg=str(key))
        assert got.source[i].tolist() == e["source"], key
        assert got.flags[i].tolist() == e["flags"], key
        methods = [got.methods.get((*key, h)) for h in range(24)]
        assert methods == e["method"], key
    assert seen == set(expected)
    return len(seen)


async def vee(conn: psycopg.AsyncConnection, f: Frontier, day: date = DAY, now=NOW):
    return await run_vee(conn, day, f.code, config=VeeConfig(), now=now)


async def test_settled_day_follows_every_kind_of_write(conn) -> None:
    f = await make_frontier(conn, ct=40.0, channels=CHANNELS)
    g = await make_frontier(conn, channels=CHANNELS, seed=2)
    fids = [f.id, g.id]
    raw = load(f, DAY)
    for ch in CHANNELS:
        await put(conn, f.principal, DAY, raw, channel=ch, skip=[5, 6, 7])
        await put(conn, f.backup, DAY, raw, channel=ch, skip=[6])
        await put(conn, g.principal, DAY, load(g, DAY), channel=ch, skip=range(12, 24))

    # VEE over a partial day: only the hours ended by `now`.
    await vee(conn, f, now=hour_starts(DAY)[10])
    await vee(conn, g, now=hour_starts(DAY)[10])
    assert await assert_days_match(conn, fids) == 4
    # The rest of the day: merged into the existing rows (g's afternoon stays empty).
    s = await vee(conn, f)
    assert s.by_source["estimate"] == 2
    await vee(conn, g)
    await assert_days_match(conn, fids)
    days = await read_settled_days(conn, [f.id], DAY, DAY, channels=["active_import"])
    assert days.source[0].tolist().count(2) == 2 and days.source[0][6] == 3  # backup, estimate
    v1 = int(days.version[0])

    # Re-settle with changes: late readings make new versions.
    late = raw.copy()
    late[6] += 1.0
    await put(conn, f.principal, DAY, late)
    await vee(conn, f)
    await assert_days_match(conn, fids)
    days = await read_settled_days(conn, [f.id], DAY, DAY, channels=["active_import"])
    assert days.source[0].tolist() == [1] * 24 and days.value[0][6] == late[6] * 40
    assert int(days.version[0]) == v1 + 1

    # A manual edit of one hour; re-runs keep it.
    t = hour_starts(DAY)[3]
    await edit_settled(
        conn,
        frontier=f.code,
        channel="active_import",
        interval_start=t,
        value=7.5,
        reason="meter replaced",
        actor="ana",
        level=2,
    )
    await assert_days_match(conn, fids)
    await put(conn, f.principal, DAY, late * 1.01)
    await vee(conn, f)
    await assert_days_match(conn, fids)
    days = await read_settled_days(conn, [f.id], DAY, DAY, channels=["active_import"])
    assert days.source[0][3] == 4 and days.value[0][3] == 7.5

    # An automatic whole-day batch over the manual hour, straight to storage, across two
    # days (the day after's first hours too), with an estimate among objects.
    starts = hour_starts(DAY) + hour_starts(DAY + timedelta(days=1))[:5]
    us = np.array([int(x.timestamp()) * 1_000_000 for x in starts])
    keep = np.arange(len(starts)) != 9
    res = await write_settled(
        conn,
        [SettledValue(f.id, 1, starts[9], 1.25, "estimate", "interpolation", 0, {"x": 1})],
        measured=measured_array(
            frontier_id=f.id,
            channel=1,
            interval_start=us[keep],
            value=np.arange(len(starts))[keep] + 0.5,
            source=2,
            flags=0,
            meter_id=f.backup,
            reading_version=1,
            secondary=1.0,
            factor=1.0,
        ),
        actor="pytest",
        reason="bulk",
    )
    assert res.kept_manual == 1
    await assert_days_match(conn, fids)
    days = await read_settled_days(conn, [f.id], DAY, DAY + timedelta(days=1), ["active_import"])
    assert days.methods[(f.id, 1, DAY, 9)] == "interpolation"
    assert days.source[0][3] == 4 and np.isnan(days.value[1][5:]).all()

    # A manual value over the estimate, then an automatic one that leaves it alone.
    await write_settled(
        conn,
        [SettledValue(f.id, 1, starts[9], 2.0, "manual", None, 0, {})],
        actor="ana",
        reason="checked",
    )
    await write_settled(
        conn,
        [SettledValue(f.id, 1, starts[9], 3.0, "estimate", "typical", 0, {})],
        actor="pytest",
    )
    await assert_days_match(conn, fids)
    days = await read_settled_days(conn, [f.id], DAY, DAY, ["active_import"])
    assert days.value[0][9] == 2.0 and (f.id, 1, DAY, 9) not in days.methods

    # The rebuild (the migration's backfill, retention) gives the same rows.
    before = await read_settled_days(conn, fids, DAY, DAY + timedelta(days=1))
    await conn.execute("SELECT settled_day_rebuild(%s, %s)", (DAY, DAY + timedelta(days=1)))
    after = await read_settled_days(conn, fids, DAY, DAY + timedelta(days=1))
    await conn.commit()
    for name in ("frontier_id", "channel", "day", "value", "source", "flags"):
        np.testing.assert_array_equal(getattr(before, name), getattr(after, name))
    assert before.methods == after.methods
    await assert_days_match(conn, fids)


async def test_write_that_fails_leaves_settled_day_as_it_was(conn) -> None:
    f = await make_frontier(conn)
    await put(conn, f.principal, DAY, load(f, DAY))
    await vee(conn, f)
    before = await read_settled_days(conn, [f.id], DAY, DAY)
    await conn.execute("DELETE FROM frontier_log WHERE false")  # open a transaction
    try:
        async with conn.transaction():
            await write_settled(
                conn,
                [SettledValue(f.id, 1, hour_starts(DAY)[0], 9.0, "manual", None, 0, {})],
                actor="ana",
                reason="x",
            )
            raise RuntimeError("rolled back")
    except RuntimeError:
        pass
    await conn.rollback()
    after = await read_settled_days(conn, [f.id], DAY, DAY)
    np.testing.assert_array_equal(before.value, after.value)
    await assert_days_match(conn, [f.id])
