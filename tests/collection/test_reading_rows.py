"""The collector's rows of hourly profiles are what ``to_hourly`` makes of them.

The writer turns hourly entries into rows directly (no object per value: a 30-day first
contact brings thousands of values per meter); sub-hourly entries still go through
``to_hourly``. Both paths must give the same rows, flags included.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from cgm.collection.engine import _corrected, _Rows
from cgm.collection.hourly import to_hourly
from cgm.storage import Quality
from cgm.storage.common import channel_id
from drivers.base import Channel, ProfileEntry

HOUR = timedelta(hours=1)
T0 = datetime(2026, 11, 1, 5, tzinfo=UTC)
AT = datetime(2026, 11, 2, 6, 3, tzinfo=UTC)


def _entries() -> list[ProfileEntry]:
    out = []
    for h in range(30):
        values = {Channel.ACTIVE_IMPORT: 1.25 + h, "active_export": 0.0}
        if h % 3:
            values[Channel.REACTIVE_IMPORT] = 0.5 * h
        out.append(
            ProfileEntry(
                T0 + h * HOUR,
                HOUR,
                values,
                status=0x180 | h % 4,  # bits above the status byte are not the meter's
                rollover=frozenset({Channel.ACTIVE_IMPORT}) if h == 7 else frozenset(),
            )
        )
    quarter = timedelta(minutes=15)
    start = T0 + 40 * HOUR
    out += [
        ProfileEntry(start + i * quarter, quarter, {Channel.ACTIVE_IMPORT: 0.1}) for i in range(4)
    ]
    return out


def _reference(entries: list[ProfileEntry], base: int, spans) -> list[tuple]:
    out = []
    for v in to_hourly(entries).values:
        q = base | v.quality
        if _corrected(spans, v.start):
            q |= Quality.LARGE_CLOCK_CORRECTION
        out.append((7, channel_id(v.channel), v.start, v.value, int(q), AT))
    return out


@pytest.mark.parametrize("spans", [(), ((T0 + 9 * HOUR, T0 + 12 * HOUR),)])
def test_hourly_entries_become_the_rows_to_hourly_gives(spans) -> None:
    entries = _entries()
    base = int(Quality.BACKUP_CHANNEL)
    rows = _Rows()
    rest = rows.hourly(7, entries, base, spans, AT)
    assert [e.period for e in rest] == [timedelta(minutes=15)] * 4
    for v in to_hourly(rest).values:
        q = base | v.quality | (Quality.LARGE_CLOCK_CORRECTION if _corrected(spans, v.start) else 0)
        rows.add(7, channel_id(v.channel), v.start, v.value, q, AT)
    got = rows.array()
    want = _reference(entries, base, spans)
    assert len(got) == len(want)
    for r, (m, c, t, v, q, at) in zip(got, want, strict=True):
        assert int(r["meter_id"]) == m and int(r["channel"]) == c
        assert r["interval_start"] == np.datetime64(t.replace(tzinfo=None), "us")
        assert float(r["value"]) == v and int(r["quality"]) == q
        assert r["collected_at"] == np.datetime64(at.replace(tzinfo=None), "us")
    flagged = got[got["quality"] & int(Quality.REGISTER_ROLLOVER) != 0]
    assert len(flagged) == 1 and int(flagged[0]["channel"]) == channel_id(Channel.ACTIVE_IMPORT)


def test_an_unknown_channel_is_refused_not_stored() -> None:
    entry = ProfileEntry(T0, HOUR, {"active_import": 1.0, "apparent": 2.0})
    rows = _Rows()
    assert rows.hourly(7, [entry], 0, (), AT) == [entry]  # left whole to the entry path
    assert not len(rows.array())  # not even its known channel
    with pytest.raises(ValueError, match="apparent"):
        to_hourly([entry])


def test_a_naive_interval_start_is_refused() -> None:
    entry = ProfileEntry(T0.replace(tzinfo=None), HOUR, {"active_import": 1.0})
    rows = _Rows()
    assert rows.hourly(7, [entry], 0, (), AT) == [entry]
    (v,) = to_hourly([entry]).values
    with pytest.raises(ValueError, match="naive"):
        rows.add(7, channel_id(v.channel), v.start, v.value, v.quality, AT)


def test_register_snapshot_times_keep_their_microseconds(new_database) -> None:
    """The writer sends register read times as epoch microseconds; PostgreSQL must give back
    the very instants (a snapshot a microsecond off would shift a derived hour's energy)."""
    import psycopg

    from cgm.collection.engine import US_TO_TIMESTAMPTZ, _epoch_us

    times = [
        datetime(2026, 11, 30, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2026, 3, 1, 5, 0, 0, 1, tzinfo=UTC),
        datetime(1999, 12, 31, 23, 59, 59, 123_457, tzinfo=UTC),
        datetime(2120, 6, 15, 12, 0, 0, 654_321, tzinfo=UTC),
    ]
    with psycopg.connect(new_database()) as conn:
        got = conn.execute(
            f"SELECT {US_TO_TIMESTAMPTZ.format('t')} FROM unnest(%s::bigint[]) AS u(t)",
            ([_epoch_us(t) for t in times],),
        ).fetchall()
    assert [r[0] for r in got] == times


@pytest.mark.parametrize("spans", [(), ((T0 + 9 * HOUR, T0 + 12 * HOUR),)])
def test_columns_taken_per_chunk_give_the_same_rows(spans) -> None:
    """A session keeps its hourly entries as columns, chunk by chunk, as they arrive; the
    writer's rows from them are the rows it makes of the entries themselves."""
    from cgm.collection.columns import ProfileColumns

    entries = _entries()
    base = int(Quality.BACKUP_CHANNEL)
    cols = ProfileColumns()
    rest = cols.add(entries[:10]) + cols.add(entries[10:])
    assert cols.entries == 30 and [e.period for e in rest] == [timedelta(minutes=15)] * 4
    assert cols.first_start() == T0
    from_columns = _Rows()
    from_columns.columns(7, cols, base, spans, AT)
    from_columns.hourly(7, rest, base, spans, AT)
    from_entries = _Rows()
    from_entries.hourly(7, entries, base, spans, AT)
    assert from_columns.array().tolist() == from_entries.array().tolist()


def test_a_chunk_with_an_unknown_channel_is_left_to_the_entry_path() -> None:
    from cgm.collection.columns import ProfileColumns

    cols = ProfileColumns()
    good = ProfileEntry(T0, HOUR, {"active_import": 1.0})
    bad = ProfileEntry(T0 + HOUR, HOUR, {"active_import": 1.0, "apparent": 2.0})
    assert cols.add([good]) == [] and len(cols) == 1
    assert cols.add([good, bad]) == [good, bad]  # refused there with the reason, as before
    assert len(cols) == 1 and cols.entries == 1
