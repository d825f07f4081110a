"""The settled write path's bulk form: plain measured values as a numpy array, validated
column-wise and sent by binary COPY, stored exactly as the object form stores them."""

from __future__ import annotations

from datetime import date

import numpy as np
import psycopg
import pytest

from cgm.localtime import hour_starts
from cgm.storage import InvalidRows, SettledValue, write_settled
from cgm.storage.settled import measured_array
from tests.vee.conftest import make_frontier, settled

DAY = date(2026, 5, 12)


def _day(fid: int, meter: int, values: np.ndarray) -> np.ndarray:
    starts = np.array([t.timestamp() for t in hour_starts(DAY)], dtype=np.int64) * 1_000_000
    return measured_array(
        frontier_id=fid,
        channel=1,
        interval_start=starts,
        value=values * 40.0,
        source=1,
        flags=0,
        meter_id=meter,
        reading_version=1,
        secondary=values,
        factor=40.0,
    )


async def test_measured_array_is_stored_like_objects_and_rewrites_nothing(conn) -> None:
    f = await make_frontier(conn)
    values = 0.1 + np.arange(24) * 0.123456789  # values a text round trip could alter
    arr = _day(f.id, f.principal, values)
    t = hour_starts(DAY)
    est = SettledValue(f.id, 1, t[5], 3.0, "estimate", "typical_curve", 256, {"x": 1})
    arr = arr[np.arange(24) != 5]
    first = await write_settled(conn, [est], measured=arr, actor="vee", reason="test")
    await conn.commit()
    assert (first.inserted, first.unchanged) == (24, 0)
    rows = await settled(conn, f, DAY)
    assert rows[0][:4] == (values[0] * 40.0, "principal", None, 0)
    assert rows[0][4] == {
        "meter_id": f.principal,
        "reading_version": 1,
        "secondary": values[0],
        "factor": 40.0,
    }
    assert rows[7][4]["secondary"] == values[7]  # bit-exact through jsonb
    assert rows[5][1:3] == ("estimate", "typical_curve")
    # The same detail written through the object form is equal: nothing changes.
    same = [
        SettledValue(f.id, 1, t[i], values[i] * 40.0, "principal", None, 0, rows[i][4])
        for i in range(24)
        if i != 5
    ]
    again = await write_settled(conn, same, actor="vee")
    again2 = await write_settled(conn, [est], measured=arr, actor="vee")
    await conn.commit()
    assert (again.unchanged, again.superseded) == (23, 0)
    assert (again2.unchanged, again2.superseded, again2.inserted) == (24, 0, 0)
    # A manual value stands against a measured array.
    manual = SettledValue(f.id, 1, t[3], 1.0, "manual", None, 0, {})
    await write_settled(conn, [manual], actor="op", reason="meter swapped")
    arr2 = arr.copy()
    arr2["value"][3] = 99.0
    kept = await write_settled(conn, measured=arr2, actor="vee")
    await conn.commit()
    assert kept.kept_manual == 1 and (await settled(conn, f, DAY))[3][1] == "manual"


async def test_measured_copy_that_meets_stored_keys_is_upserted(conn) -> None:
    # The day's first hour is new, so the write sends the measured values straight into the
    # table by COPY; hours 5–9 are stored (6 manual), so the COPY fails on a duplicate key
    # and the upsert does the batch, with an upsert's counts.
    f = await make_frontier(conn)
    arr = _day(f.id, f.principal, np.ones(24))
    arr["source"][12:14] = 2  # some backup values: the COPY's second part
    arr["meter_id"][12:14] = f.backup
    await write_settled(conn, measured=arr[5:10], actor="vee")
    manual = SettledValue(f.id, 1, hour_starts(DAY)[6], 7.0, "manual")
    await write_settled(conn, [manual], actor="ana", reason="agreed value")
    await conn.commit()
    again = arr.copy()
    again["value"][7] = 41.0
    r = await write_settled(conn, measured=again, actor="vee")
    await conn.commit()
    assert (r.inserted, r.unchanged, r.superseded, r.kept_manual) == (19, 3, 1, 1)
    rows = await settled(conn, f, DAY)
    assert [x[1] for x in rows[11:15]] == ["principal", "backup", "backup", "principal"]
    assert rows[12][4]["meter_id"] == f.backup and rows[6][1] == "manual"
    assert (rows[7][0], rows[7][5], rows[8][5]) == (41.0, 2, 1)


async def test_provenance_stored_in_detail_before_0220_equals_the_typed_columns(conn) -> None:
    """Rows settled before migration 0220 keep their provenance in ``detail``: the same
    value written again is unchanged, and a changed one is superseded with the old image
    readable in settled_version."""
    from cgm.storage import read_settled

    f = await make_frontier(conn)
    arr = _day(f.id, f.principal, 0.5 + np.arange(24) * 0.1)
    await write_settled(conn, measured=arr, actor="vee")
    # As 0220 found them: provenance in detail, the typed columns empty (same version).
    await conn.execute("ALTER TABLE settled_reading DISABLE TRIGGER settled_reading_audit")
    await conn.execute(
        """UPDATE settled_reading SET
             detail = settled_detail(detail, meter_id, reading_version, secondary, factor),
             meter_id = NULL, reading_version = NULL, secondary = NULL, factor = NULL
           WHERE frontier_id = %s""",
        (f.id,),
    )
    await conn.execute("ALTER TABLE settled_reading ENABLE TRIGGER settled_reading_audit")
    await conn.commit()
    before = await settled(conn, f, DAY)
    same = await write_settled(conn, measured=arr, actor="vee")
    assert (same.unchanged, same.superseded) == (24, 0)
    changed = arr.copy()
    changed["reading_version"][0] = 2
    r = await write_settled(conn, measured=changed, actor="vee")
    await conn.commit()
    assert (r.unchanged, r.superseded) == (23, 1)
    after = await settled(conn, f, DAY)
    assert after[1:] == before[1:]
    assert after[0][4] == {**before[0][4], "reading_version": 2} and after[0][5] == 2
    t0 = hour_starts(DAY)[0]
    (read,) = await read_settled(conn, [f.id], t0, hour_starts(DAY)[1])
    assert read.detail == after[0][4]
    cur = await conn.execute(
        """SELECT version, detail FROM settled_version
           WHERE frontier_id = %s AND interval_start = %s ORDER BY version""",
        (f.id, t0),
    )
    assert await cur.fetchall() == [(1, before[0][4]), (2, after[0][4])]


@pytest.mark.parametrize(
    ("column", "bad", "message"),
    [
        ("value", np.nan, "value not a finite"),
        ("value", -1.0, "value not a finite"),
        ("source", 3, "source not principal"),
        ("channel", 9, "unknown channel"),
        ("flags", 1 << 30, "undefined bits"),
        ("meter_id", 0, "meter_id"),
        ("interval_start", np.datetime64("2026-05-12T05:30", "us"), "boundary"),
    ],
)
async def test_bad_measured_rows_reject_the_batch(conn, column, bad, message) -> None:
    f = await make_frontier(conn)
    arr = _day(f.id, f.principal, np.ones(24))
    arr[column][4] = bad
    with pytest.raises(InvalidRows, match=message):
        await write_settled(conn, measured=arr, actor="vee")
    assert await settled(conn, f, DAY) == []


async def test_duplicates_collapse_when_equal_and_reject_when_not(conn) -> None:
    f = await make_frontier(conn)
    arr = _day(f.id, f.principal, np.ones(24))
    twice = np.concatenate([arr, arr[:3]])
    r = await write_settled(conn, measured=twice, actor="vee")
    await conn.commit()
    assert (r.received, r.inserted) == (27, 24)
    clash = np.concatenate([arr, arr[:1]])
    clash["value"][-1] = 7.0
    with pytest.raises(InvalidRows, match="different value"):
        await write_settled(conn, measured=clash, actor="vee")
    obj = SettledValue(f.id, 1, hour_starts(DAY)[0], 40.0, "backup")
    with pytest.raises(InvalidRows, match="different value"):
        await write_settled(conn, [obj], measured=arr, actor="vee")


async def test_frontier_ids_are_checked_once_per_batch_and_deletes_refused(conn) -> None:
    """Migration 0050 replaced the per-row foreign keys: the same refusals hold."""
    from cgm.storage import UnknownKeys

    cur = await conn.execute(
        """INSERT INTO frontier (code, name, kind, voltage_level, point_type)
           VALUES ('Frt9900501', 'x', 'commercialisation', 2, 1),
                  ('Frt9900502', 'y', 'commercialisation', 2, 1) RETURNING id"""
    )
    (with_values,), (without,) = await cur.fetchall()
    await conn.commit()
    arr = _day(with_values, 1, np.ones(24))
    await write_settled(conn, measured=arr, actor="vee")
    await conn.commit()
    with pytest.raises(UnknownKeys, match="unknown frontier"):
        await write_settled(
            conn, measured=_day(with_values + 10_000_000, 1, np.ones(24)), actor="vee"
        )
    await conn.rollback()
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match="has settled values"):
        await conn.execute("DELETE FROM frontier WHERE id = %s", (with_values,))
    await conn.rollback()
    await conn.execute("DELETE FROM frontier WHERE id = %s", (without,))
    await conn.commit()
    with pytest.raises(psycopg.errors.CheckViolation):
        await conn.execute(
            """INSERT INTO settled_reading (frontier_id, channel, interval_start, value, source)
               VALUES (%s, 5, now(), 1, 'principal')""",
            (with_values,),
        )
    await conn.rollback()
