"""CPU of the collector's per-row screening, without the database or the network.

    .venv/bin/python benchmarks/screen.py [--meters 2000] [--repeat 5]

What a cycle adds before its batched write since values are screened per row: summing
sub-hourly entries into hours (``cgm.collection.hourly``), building the rows, the storage
checks row by row (``row_problems``) and the plausibility guard. Three shapes of work per
meter: the steady hourly cycle (one new hour of 4 channels), the same with a 15-minute
profile (4 entries an hour), and a 35-day first contact (840 hours). Prints the best of
``--repeat`` runs in µs per meter and the load average (the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import UTC, datetime, timedelta

from cgm.collection.engine import Stored, _Rows, _screen
from cgm.collection.hourly import to_hourly
from cgm.collection.session import MeterOutcome
from cgm.registry.store import MeterConfig
from cgm.storage import Quality
from cgm.storage.common import channel_id
from drivers.base import ALL_CHANNELS, Endpoint, ProfileEntry

START = datetime(2026, 3, 1, tzinfo=UTC)


def _target(i: int) -> MeterConfig:
    return MeterConfig(
        meter_id=i + 1, serial=f"M{i}", role="principal", protocol="dlms",
        endpoints=(Endpoint("127.0.0.1", 4059),), params={"rated_current_a": 5},
        ct_ratio=40.0, vt_ratio=110.0, channels=ALL_CHANNELS, frontier_id=i + 1,
        frontier_code=f"Frt{i}", point_type=3, clock_limit_s=60.0, adjustment_factor=1.0,
        credentials={}, installed_capacity_mva=5.0,
    )  # fmt: skip


def _outcomes(meters: int, hours: int, period: timedelta) -> list[MeterOutcome]:
    per_hour = int(timedelta(hours=1) / period)
    out = []
    for i in range(meters):
        entries = [
            ProfileEntry(START + k * period, period, {ch: 0.25 for ch in ALL_CHANNELS})
            for k in range(hours * per_hour)
        ]
        out.append(MeterOutcome(target=_target(i), started_at=START, entries=entries))
    return out


def _screen_batch(batch: list[MeterOutcome]) -> int:
    rows, stored = _Rows(), Stored()
    for o in batch:
        hourly = to_hourly(o.entries)
        for v in hourly.values:
            rows.add(o.target.meter_id, channel_id(v.channel), v.start, v.value,
                     Quality(v.quality), START)  # fmt: skip
    return len(_screen(rows.array(), batch, stored))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--meters", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()}")
    cases = (
        ("hourly, 1 new hour", args.meters, 1, timedelta(hours=1)),
        ("15-minute, 1 new hour", args.meters, 1, timedelta(minutes=15)),
        ("hourly, 35-day catch-up", max(1, args.meters // 20), 840, timedelta(hours=1)),
    )
    for name, meters, hours, period in cases:
        batch = _outcomes(meters, hours, period)
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.process_time()
            n = _screen_batch(batch)
            best = min(best, time.process_time() - t0)
        assert n == meters * hours * len(ALL_CHANNELS)
        print(f"{name:26s} {meters:5d} meters  {best / meters * 1e6:9.1f} µs CPU per meter")


if __name__ == "__main__":
    main()
