"""`format=hourly` is read from reading_day; it must give byte for byte the document the
aggregation of `reading` gives, for any range (mid-day starts and ends, gaps, flags, series
without readings in the range, changed values), and fall back to `reading` where a day
holds sub-hourly rows."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import psycopg
import pytest

from cgm.api import encode
from cgm.localtime import hour_starts
from cgm.storage import Reading, readings_array, write_readings
from tests.api.conftest import make_frontier
from tests.api.test_api import DAY

T0 = hour_starts(DAY)[0]
H = timedelta(hours=1)


async def both(conn, fr, start: datetime, end: datetime, channels=(1, 2, 3, 4)):
    meters = [(fr.principal_id, fr.principal, "principal", True),
              (fr.backup_id, fr.backup, "backup", True)]  # fmt: skip
    head = {"frontier": fr.code, "start": start.isoformat(), "end": end.isoformat()}
    days = await encode.hourly_body(conn, head, meters, start, end, list(channels))
    rows = await encode._hourly_from_readings(conn, head, meters, start, end, list(channels))
    return days, rows


@pytest.mark.parametrize("seed", [1, 2])
async def test_hourly_from_days_equals_hourly_from_readings(db_url: str, seed: int) -> None:
    fr = await make_frontier(db_url)
    rng = np.random.default_rng(seed)
    n = 24 * 40
    m, c, h = np.meshgrid([fr.principal_id, fr.backup_id], [1, 2, 4], np.arange(n), indexing="ij")
    keep = rng.random(m.size) > 0.2  # a fifth of the hours never read: null, not 0
    t = np.datetime64(T0.replace(tzinfo=None), "us") + h.ravel().astype("m8[h]")
    rows = readings_array(
        m.ravel()[keep], c.ravel()[keep], t[keep], np.round(rng.uniform(0, 99, m.size), 3)[keep],
        rng.choice([0, 0, 0, 1, 0x80], m.size)[keep], np.datetime64("2026-05-01", "us"),
    )  # fmt: skip
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        await write_readings(conn, rows, source="test", actor="t")
        late = rows[rng.random(len(rows)) < 0.05].copy()
        late["value"] += 1
        await write_readings(conn, late, source="test", actor="t")
        await conn.commit()
        for start_h, end_h, chans in [
            (0, n, (1, 2, 3, 4)),
            (7, n - 5, (1, 2, 3, 4)),
            (30, 31, (2,)),
            (-50, 20, (4, 1)),
            (n - 3, n + 100, (1, 2, 3, 4)),
            (n + 10, n + 40, (1, 2, 3, 4)),  # nothing stored: no channel
        ]:
            days, rows_doc = await both(conn, fr, T0 + start_h * H, T0 + end_h * H, chans)
            assert days == rows_doc, (start_h, end_h, chans)


async def test_sub_hourly_day_falls_back_to_readings(db_url: str) -> None:
    fr = await make_frontier(db_url)
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        q = [Reading(fr.principal_id, 1, T0 + 30 * H + timedelta(minutes=15 * k), 0.25, 0, T0)
             for k in range(4)]  # fmt: skip
        await write_readings(conn, q, source="t", actor="t", interval=timedelta(minutes=15))
        hourly = [Reading(fr.principal_id, 1, T0 + k * H, 1.0, 0, T0) for k in range(48)
                  if k != 30]  # fmt: skip
        await write_readings(conn, hourly, source="t", actor="t")
        await conn.commit()
        # The off-grid rows are outside the range but in its day: still the same document.
        days, rows_doc = await both(conn, fr, T0 + 24 * H, T0 + 30 * H)
        assert days == rows_doc
        with pytest.raises(encode.OffGrid):
            await encode.hourly_body(conn, {}, [(fr.principal_id, "P", "principal", True)],
                                     T0 + 24 * H, T0 + 48 * H, [1])  # fmt: skip
