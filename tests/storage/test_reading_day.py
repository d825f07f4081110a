"""reading_day always says what `reading` holds: after any mix of writes (new, late, changed
value or quality, duplicate, sub-hourly, several days, concurrent writers) its arrays equal
the stored readings placed in their Colombian hour, and its counter moved exactly for the
days whose readings changed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import pytest

from cgm.collection.hourly import to_hourly
from cgm.localtime import COLOMBIA
from cgm.storage import Quality, Reading, read_readings, readings_array, write_readings
from drivers.base import Channel, ProfileEntry

T0 = datetime(2026, 3, 1, 5, tzinfo=UTC)  # 00:00 Colombia
H = timedelta(hours=1)
COLLECTED = datetime(2026, 3, 10, tzinfo=UTC)
SPAN = (T0 - 10 * 24 * H, T0 + 20 * 24 * H)

Days = dict[tuple[int, int, object], tuple[list[float | None], list[int | None], bool]]


async def expected(conn: psycopg.AsyncConnection, meters: list[int]) -> Days:
    """reading_day as it must be, computed here from the stored readings with datetime."""
    rows = await read_readings(conn, meters, *SPAN)
    out: Days = {}
    for r in rows.tolist():
        mid, ch, t, v, q = r[0], r[1], r[2], r[3], r[4]
        local = t.replace(tzinfo=UTC).astimezone(COLOMBIA)
        vals, quals, off = out.setdefault(
            (mid, ch, local.date()), ([None] * 24, [None] * 24, False)
        )
        if local.minute or local.second or local.microsecond:
            out[(mid, ch, local.date())] = (vals, quals, True)
        else:
            vals[local.hour], quals[local.hour] = v, q
    await conn.commit()
    return out


async def stored(conn: psycopg.AsyncConnection, meters: list[int]) -> tuple[Days, dict]:
    cur = await conn.execute(
        "SELECT meter_id, channel, day, value, quality, off_grid, version FROM reading_day"
        " WHERE meter_id = ANY(%s)",
        (meters,),
    )
    rows = await cur.fetchall()
    await conn.commit()
    return (
        {(m, c, d): (v, q, o) for m, c, d, v, q, o, _ in rows},
        {(m, c, d): ver for m, c, d, *_, ver in rows},
    )


async def check(conn: psycopg.AsyncConnection, meters: list[int]) -> dict:
    days, versions = await stored(conn, meters)
    want = await expected(conn, meters)
    assert days == want
    return versions


def hours(meters: list[int], start: datetime, n: int, seed: int, skip=()) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m, c, h = np.meshgrid(
        meters, [1, 2, 3, 4], [k for k in range(n) if k not in skip], indexing="ij"
    )
    t = np.datetime64(start.replace(tzinfo=None), "us") + h.ravel().astype("m8[h]")
    rows = readings_array(
        m.ravel(), c.ravel(), t, np.round(rng.uniform(0, 500, m.size), 3), 0,
        np.datetime64(COLLECTED.replace(tzinfo=None), "us"),
    )  # fmt: skip
    return rows[rng.permutation(len(rows))]


def bumped(before: dict, after: dict) -> set:
    """Days whose counter moved (new days count as moved)."""
    return {k for k, v in after.items() if before.get(k) != v}


@pytest.mark.parametrize("fast", [True, False])
async def test_reading_day_follows_every_kind_of_write(conn, meters, fast: bool) -> None:
    ms = meters[:2]
    w = {"source": "test", "actor": "t", "fast": fast}
    # Catch-up: 3 local days at once, with a gap (hours 30, 31 never read).
    await write_readings(conn, hours(ms, T0, 60, 1, skip={30, 31}), **w)
    v0 = await check(conn, ms)
    assert len(v0) == 2 * 4 * 3 and set(v0.values()) == {1}
    assert all(vals[6] is None and vals[7] is None for (_, _, d), (vals, _, _) in
               (await stored(conn, ms))[0].items() if d.day == 2)  # fmt: skip

    # Hourly steady state: one new hour per series, a slot set, the day's counter + 1.
    for k in (60, 61):
        await write_readings(conn, hours(ms, T0 + k * H, 1, 10 + k), **w)
        v1 = await check(conn, ms)
        assert {v1[x] - v0[x] for x in bumped(v0, v1)} == {1} and len(bumped(v0, v1)) == 8
        v0 = v1

    # The same batch again (a re-read): nothing moves.
    again = hours(ms, T0 + 61 * H, 1, 71)
    await write_readings(conn, again, **w)
    assert await check(conn, ms) == v0

    # A late reading in the gap, a changed value and a quality-only change on day 1.
    m = ms[0]
    late = [
        Reading(m, Channel.ACTIVE_IMPORT, T0 + 30 * H, 7.0, 0, COLLECTED),
        Reading(m, Channel.ACTIVE_IMPORT, T0 + 2 * H, 1234.5, 0, COLLECTED + H),
        Reading(m, Channel.REACTIVE_IMPORT, T0 + 3 * H, 0.0, 0, COLLECTED + H),
    ]
    cur = await conn.execute(
        "SELECT value FROM reading WHERE meter_id = %s AND channel = 3 AND interval_start = %s",
        (m, T0 + 3 * H),
    )
    (old,) = await cur.fetchone()
    await conn.commit()
    late[2] = Reading(m, Channel.REACTIVE_IMPORT, T0 + 3 * H, old,
                      int(Quality.METER_POWER_DOWN), COLLECTED + H)  # fmt: skip
    res = await write_readings(conn, late, **w)
    assert (res.inserted, res.superseded) == (1, 2)
    v1 = await check(conn, ms)
    day1, day2 = T0.astimezone(COLOMBIA).date(), (T0 + 30 * H).astimezone(COLOMBIA).date()
    assert bumped(v0, v1) == {(m, 1, day1), (m, 3, day1), (m, 1, day2)}
    assert v1[(m, 1, day1)] == v0[(m, 1, day1)] + 1
    v0 = v1

    # One batch over several days mixing new, changed and unchanged rows.
    mix = hours(ms, T0 + 40 * H, 40, 5)
    mix["value"][::7] += 1.0
    await write_readings(conn, mix, **w)
    await check(conn, ms)


async def test_sub_hourly_rows_and_aggregated_hours(conn, meters) -> None:
    m = meters[0]
    # A series written as 15-minute rows: no slot for :15/:30/:45, the day is off grid.
    q = [Reading(m, 1, T0 + timedelta(minutes=15 * k), 0.25, 0, COLLECTED) for k in range(8)]
    await write_readings(conn, q, source="test", actor="t", interval=timedelta(minutes=15))
    await check(conn, [m])
    # A whole hour later that day: the day stays off grid.
    await write_readings(
        conn, [Reading(m, 1, T0 + 5 * H, 1.0, 0, COLLECTED)], source="t", actor="t"
    )
    await check(conn, [m])
    days, _ = await stored(conn, [m])
    assert days[(m, 1, T0.astimezone(COLOMBIA).date())][2] is True
    # Profile entries of 15 minutes summed into hours by the collector: ordinary hours; the
    # incomplete one flagged PARTIAL and stored as measured.
    entries = [
        ProfileEntry(T0 + 24 * H + timedelta(minutes=15 * k), timedelta(minutes=15),
                     {Channel.ACTIVE_EXPORT: 1.5})
        for k in range(7)
    ]  # fmt: skip
    hv = to_hourly(entries).values
    rows = [Reading(m, v.channel, v.start, v.value, v.quality, COLLECTED) for v in hv]
    await write_readings(conn, rows, source="test", actor="t")
    await check(conn, [m])
    days, _ = await stored(conn, [m])
    vals, quals, off = days[(m, 2, (T0 + 24 * H).astimezone(COLOMBIA).date())]
    assert (vals[:2], off) == ([6.0, 4.5], False) and quals[1] & int(Quality.PARTIAL)


async def test_concurrent_writers_to_the_same_days(db_url, meters) -> None:
    ms = meters[:2]
    batches = [hours(ms, T0 + k * H, 1, 100 + k) for k in range(0, 48, 2)] + [
        hours(ms, T0 + k * H, 1, 100 + k) for k in range(1, 48, 2)
    ]

    async def writer(part: list[np.ndarray]) -> None:
        async with await psycopg.AsyncConnection.connect(db_url) as c:
            for b in part:
                await write_readings(c, b, source="test", actor="t", fast=False)

    await asyncio.gather(writer(batches[:24]), writer(batches[24:]))
    async with await psycopg.AsyncConnection.connect(db_url) as c:
        versions = await check(c, ms)
    assert sorted(set(versions.values())) == [24]  # 24 hours written into each day row


async def test_rebuild_gives_back_the_same_days(conn, meters) -> None:
    ms = meters[:2]
    await write_readings(conn, hours(ms, T0, 50, 3, skip={4}), source="test", actor="t")
    before, v0 = await stored(conn, ms)
    await conn.execute("DELETE FROM reading_day WHERE meter_id = %s", (ms[0],))
    await conn.execute(
        "UPDATE reading_day SET value[3] = 0 WHERE meter_id = %s AND channel = 2", (ms[1],)
    )
    await conn.execute("SELECT reading_day_rebuild(%s, %s)", (T0.date(), (T0 + 50 * H).date()))
    await conn.commit()
    after, v1 = await stored(conn, ms)
    assert after == before == await expected(conn, ms)
    assert {k for k in v1 if v1[k] != v0[k] and k[0] == ms[1]} == {
        k for k in v0 if k[0] == ms[1] and k[1] == 2
    }
