"""What a DLMS profile layout costs the driver, and what an endless block answer costs it.

    .venv/bin/python benchmarks/dlms_profile.py [--reads 20]

A child process serves one simulated meter per layout (interval energies; cumulative
registers; cumulative tariff registers with demand and voltage columns; each hourly and at
15 minutes) and one that never ends a block transfer. This process reads 30 days of profile
``--reads`` times per layout and reports the driver's CPU per read (parse, classify,
difference), and, for the endless meter, how long and how much memory it took to give up,
with the reassembly bound on and (monkeypatched) off.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import drivers.dlms.driver as dlms_driver  # noqa: E402
from drivers.base import AccessLevel, Credentials, DriverError, Endpoint  # noqa: E402
from drivers.dlms import DlmsDriver  # noqa: E402

HOUR = timedelta(hours=1)
QUARTER = timedelta(minutes=15)
LAYOUTS = {
    # name: (DlmsVariant kwargs, capture period)
    "interval-60": ({"profile": "interval"}, HOUR),
    "cumulative-60": ({"profile": "cumulative"}, HOUR),
    "tariffs+extra-60": ({"profile": "cumulative", "tariffs": 2, "extra_columns": True}, HOUR),
    "interval-15": ({"profile": "interval"}, QUARTER),
    "cumulative-15": ({"profile": "cumulative"}, QUARTER),
}
LEVEL1 = Credentials(AccessLevel.READ, "reader-1")


async def _serve() -> None:
    from simulators.dlms import DlmsVariant, serve
    from simulators.meter import SimulatedMeter

    ports, servers = {}, []
    for name, (variant, period) in LAYOUTS.items():
        meter = SimulatedMeter(
            name, seed=1, capture_period=period, depth=int(35 * 24 * HOUR / period)
        )
        servers.append(await serve(meter, max_pdu_size=1024, variant=DlmsVariant(**variant)))
        ports[name] = servers[-1].port
    endless = SimulatedMeter("endless", seed=1)
    servers.append(
        await serve(endless, max_pdu_size=8192, variant=DlmsVariant(endless_blocks=True))
    )
    ports["endless"] = servers[-1].port
    print(json.dumps(ports), flush=True)
    await asyncio.Event().wait()


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) / 1024


async def _layout(name: str, port: int, reads: int) -> dict:
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    async with await DlmsDriver().connect(Endpoint("127.0.0.1", port), LEVEL1, timeout=60) as s:
        await s.read_profile(end - 2 * HOUR, end)  # layout and warm-up
        cpu0, t0 = _cpu(), time.perf_counter()
        for _ in range(reads):
            entries = await s.read_profile(end - 30 * 24 * HOUR, end)
        wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
        blocks = s.blocks_received
    return {
        "layout": name,
        "entries": len(entries),
        "blocks_per_read": blocks // (reads + 1),
        "driver_cpu_ms_per_read": round(cpu / reads * 1000, 1),
        "driver_cpu_us_per_entry": round(cpu / reads / len(entries) * 1e6, 1),
        "wall_ms_per_read": round(wall / reads * 1000, 1),
    }


async def _endless(port: int, bounded: bool) -> dict:
    saved = dlms_driver._ROW_CELL_BYTES  # noqa: SLF001 - lift the bound for the comparison
    if not bounded:
        dlms_driver._ROW_CELL_BYTES = 10**12  # noqa: SLF001
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    try:
        async with await DlmsDriver().connect(Endpoint("127.0.0.1", port), LEVEL1, timeout=10) as s:
            await s.read_profile_config()
            rss0, t0 = _rss_mb(), time.perf_counter()
            try:
                await s.read_profile(end - 30 * 24 * HOUR, end)
                outcome = "read"
            except DriverError as exc:
                outcome = exc.reason
            wall = time.perf_counter() - t0
            blocks = s.blocks_received
    finally:
        dlms_driver._ROW_CELL_BYTES = saved  # noqa: SLF001
    return {
        "endless_blocks": "bounded" if bounded else "bound lifted",
        "outcome": outcome,
        "blocks": blocks,
        "seconds": round(wall, 2),
        "rss_mb_before": round(rss0, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


async def main(args: argparse.Namespace, ports: dict[str, int]) -> None:
    print(f"load average at start: {os.getloadavg()[0]:.2f} (2 cores)")
    for name in LAYOUTS:
        print(json.dumps(await _layout(name, ports[name], args.reads)))
    print(json.dumps(await _endless(ports["endless"], bounded=True)))
    print(json.dumps(await _endless(ports["endless"], bounded=False)))
    print(f"load average at end: {os.getloadavg()[0]:.2f} (2 cores)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--reads", type=int, default=20)
    arguments = parser.parse_args()
    if arguments.serve:
        asyncio.run(_serve())
        sys.exit(0)
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert child.stdout is not None
        asyncio.run(main(arguments, json.loads(child.stdout.readline())))
    finally:
        child.terminate()
        child.wait()
