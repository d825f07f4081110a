"""A frontier-day whose inputs did not change since its last run is skipped — and skipping
never leaves a value different from what a full run computes: after every kind of input
change, a run that may skip is followed by a full run (records removed) that must find
nothing to write."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import psycopg

from cgm.localtime import hour_starts
from cgm.storage import Quality
from cgm.vee import VeeConfig, run_vee
from cgm.vee.daytype import same_type_days
from cgm.vee.edit import edit_settled
from cgm.vee.power import import_power
from tests.vee.conftest import Frontier, load, make_frontier, put, settled

DAY = date(2026, 3, 10)  # a Tuesday
NOW = datetime(2026, 6, 1, tzinfo=UTC)
CONFIG = VeeConfig(typical_weeks=2, typical_max_days=3)


async def vee(conn, f: Frontier, day: date = DAY, config: VeeConfig = CONFIG):
    return await run_vee(conn, day, f.code, config=config, now=NOW)


async def full_run_agrees(conn: psycopg.AsyncConnection, f: Frontier, day: date = DAY) -> None:
    """A run without records (everything recomputed) writes nothing: what the skipping
    runs left stored is what a full run computes."""
    await conn.execute("DELETE FROM vee_day_inputs WHERE frontier_id = %s", (f.id,))
    await conn.commit()
    full = await vee(conn, f, day)
    assert full.skipped == 0 and full.values > 0
    assert full.written == 0, "a skipped run left a value a full run changes"


async def test_unchanged_rerun_skips_and_a_late_reading_does_not(conn) -> None:
    f = await make_frontier(conn)
    raw = load(f, DAY)
    await put(conn, f.principal, DAY, raw)
    await put(conn, f.backup, DAY, raw)
    first = await vee(conn, f)
    assert first.written == 24 and first.skipped == 0
    again = await vee(conn, f)
    assert (again.skipped, again.values, again.written) == (1, 0, 0)
    late = raw.copy()
    late[7] += 1.0
    await put(conn, f.principal, DAY, late)  # version 2 of period 8
    third = await vee(conn, f)
    assert third.skipped == 0 and third.written == 1
    assert (await settled(conn, f, DAY))[7][0] == late[7]
    assert (await vee(conn, f)).skipped == 1
    await full_run_agrees(conn, f)


async def test_every_input_change_is_seen(conn) -> None:
    f = await make_frontier(conn, ct=10.0)
    hist = same_type_days(DAY, 2, 3)
    for d in hist:
        await put(conn, f.principal, d, load(f, d))
        await put(conn, f.backup, d, load(f, d))
        await vee(conn, f, d)
    raw = load(f, DAY)
    gap = [0, 9, 10, 11, 23]  # edges too: the day's own first hour is history's neighbour
    await put(conn, f.principal, DAY, raw, skip=gap)
    await put(conn, f.backup, DAY, raw, skip=gap)
    first = await vee(conn, f)
    assert first.by_source["estimate"] == len(gap)
    # An estimate depends on the day's own values (through the day before's window): the
    # run after one that wrote them computes once more, then the day is skipped.
    await vee(conn, f)
    assert (await vee(conn, f)).skipped == 1
    await full_run_agrees(conn, f)
    starts = hour_starts(DAY)

    async def changed(step: str) -> None:
        s = await vee(conn, f)
        assert s.skipped == 0, f"{step}: the run skipped a changed frontier-day"
        await vee(conn, f)  # settles what the first one changed of the day itself
        await full_run_agrees(conn, f)

    # a reading's quality (same value: a new version)
    await put(conn, f.backup, DAY, raw, skip=gap, quality={3: int(Quality.PARTIAL)})
    await changed("reading quality")
    # register snapshots bracketing the gap: the estimates scale to them
    for at, v in ((starts[9], 1000.0), (starts[12], 1000.0 + float(raw[9:12].sum()))):
        await conn.execute(
            "INSERT INTO register_snapshot (meter_id, channel, read_at, value)"
            " VALUES (%s, 1, %s, %s)",
            (f.principal, at, v),
        )
    await conn.commit()
    await changed("register snapshots")
    assert (await settled(conn, f, DAY))[10][2] == "typical_curve_registers"
    # power samples (SCADA) over the last hour
    t0 = starts[23]
    await import_power(
        conn, [(f.code, 1, t0 + timedelta(minutes=m), 5000.0) for m in range(0, 61, 10)]
    )
    await conn.commit()
    await changed("power samples")
    assert (await settled(conn, f, DAY))[23][2] == "scada_integration"
    # a history day (not next to the day: its readings are no input) re-settled with
    # different readings: the typical curve moves
    assert hist[2] < DAY - timedelta(days=2)
    await put(conn, f.principal, hist[2], load(f, hist[2]) * 1.3)
    await vee(conn, f, hist[2])
    before = (await settled(conn, f, DAY))[0][0]
    await changed("history")
    assert (await settled(conn, f, DAY))[0][0] != before
    # a large clock correction in the hoja de vida
    await conn.execute(
        """INSERT INTO frontier_log (frontier_id, meter_id, at, actor, kind, purpose)
           VALUES (%s, %s, %s, 'collector', 'level2_access', 'clock synchronisation')""",
        (f.id, f.principal, starts[5] + timedelta(minutes=1)),
    )
    await conn.commit()
    await changed("clock correction")
    # the registry: a new CT ratio
    await conn.execute("UPDATE meter SET ct_ratio = 20 WHERE frontier_id = %s", (f.id,))
    await conn.commit()
    await changed("registry")
    # the settings
    s = await vee(conn, f, config=VeeConfig(typical_weeks=2, typical_max_days=2))
    assert s.skipped == 0
    # a manual edit of the day: kept, and a full run agrees
    await edit_settled(
        conn,
        frontier=f.code,
        channel=1,
        interval_start=starts[10],
        value=1.0,
        reason="test",
        actor="ana",
        level=2,
    )
    await conn.commit()
    await vee(conn, f)
    await full_run_agrees(conn, f)
    assert (await settled(conn, f, DAY))[10][1] == "manual"


async def test_hours_that_end_later_are_settled_later(conn) -> None:
    """``now`` inside the day: the hours not yet ended are no reason to skip later."""
    f = await make_frontier(conn)
    raw = load(f, DAY)
    await put(conn, f.principal, DAY, raw)
    noon = hour_starts(DAY)[12]
    s1 = await run_vee(conn, DAY, f.code, config=CONFIG, now=noon)
    s2 = await run_vee(conn, DAY, f.code, config=CONFIG, now=noon + timedelta(hours=3))
    assert (s1.written, s2.skipped, s2.written) == (12, 0, 3)
    assert np.isclose((await settled(conn, f, DAY))[14][0], raw[14])
