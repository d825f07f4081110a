"""CPU per meter session, by protocol: the driver's side and the simulator's side.

    .venv/bin/python benchmarks/protocol_cpu.py [--meters 200] [--concurrency 64]
        [--rounds 3] [--protocols dlms modbus mqtt] [--mqtt-url mqtt://127.0.0.1:1883]
        [--profile-driver /tmp/d.prof] [--profile-sim /tmp/s.prof]

A child process serves ``--meters`` simulated meters per protocol (``simulators.fleet``, 100
per port as ``benchmarks/collect.py`` serves them; MQTT through the broker at
``--mqtt-url``); this process runs each meter's steady-state session as the collector does
(connect and authenticate, identify, clock, profile configuration, the last hour of profile,
registers, release), ``--concurrency`` at a time, first once to warm up (column hints, first
contact), then ``--rounds`` times measured. No database: this is the protocol alone.

Printed per protocol: this process's CPU per session (``getrusage``: the driver, its
library and asyncio) and the simulator process's (``psutil``), best round and median, with
the load average. CPU time survives a loaded host far better than wall time.

``--profile-driver`` writes a cProfile (CPU-time clock) of this process's measured rounds;
``--profile-sim`` one of the simulator's (enabled for the measured rounds only).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drivers import get_driver  # noqa: E402
from drivers.base import AccessLevel, Credentials, Endpoint  # noqa: E402

PER_PORT = 100


async def _serve(args: argparse.Namespace) -> None:
    """Child: serve the fleet, print where each meter is, profile on SIGUSR1/SIGUSR2."""
    from simulators.fleet import Fleet, build_fleet, start_fleet
    from simulators.mqtt import serve as serve_mqtt

    mix = {p: 1.0 for p in args.protocols}
    fleet = build_fleet(args.meters * len(mix) // 2, seed=1, mix=mix)
    wired = Fleet([f for f in fleet.frontiers if f.protocol != "mqtt"])
    await start_fleet(wired, per_port=PER_PORT)
    out = []
    for frontier, meter in wired.meters():
        place = wired.placements[meter.serial]
        out.append(
            {
                "protocol": frontier.protocol,
                "serial": meter.serial,
                "host": place.host,
                "port": place.port,
                "params": place.params,
                "secret": meter.secrets.level1,
            }
        )
    mqtt_meters = [m for f, m in fleet.meters() if f.protocol == "mqtt"]
    if mqtt_meters:
        # A prefix of its own: the broker may be shared with other runs of the same fleet.
        url = urlparse(args.mqtt_url)
        broker = (url.hostname or "127.0.0.1", url.port or 1883)
        prefix = f"bench{os.environ.get('CGM_BENCH_RUN', 'x')}"
        await serve_mqtt(mqtt_meters, *broker, prefix=prefix)
        for meter in mqtt_meters:
            out.append(
                {
                    "protocol": "mqtt",
                    "serial": meter.serial,
                    "host": broker[0],
                    "port": broker[1],
                    "params": {"serial": meter.serial, "topic_prefix": prefix},
                    "secret": meter.secrets.level1,
                }
            )
    profiler = cProfile.Profile(time.process_time)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, profiler.enable)

    def dump() -> None:
        profiler.disable()
        if args.profile_sim:
            profiler.dump_stats(args.profile_sim)
        print("dumped", flush=True)

    loop.add_signal_handler(signal.SIGUSR2, dump)
    print(json.dumps(out), flush=True)
    await asyncio.Event().wait()


async def _session(meter: dict, hour: datetime) -> None:
    driver = get_driver(meter["protocol"])
    params = dict(meter["params"])
    client = None
    if meter["protocol"] == "mqtt":
        client = "bench"
    session = await driver.connect(
        Endpoint(meter["host"], meter["port"]),
        Credentials(AccessLevel.READ, meter["secret"], client=client),
        params,
        timeout=30,
    )
    async with session:
        await session.identify()
        await session.read_clock()
        await session.read_profile_config()
        entries = await session.read_profile(hour - timedelta(hours=1), hour)
        assert entries, f"{meter['serial']}: no entry for the last hour"
        await session.read_registers()


async def _round(meters: list[dict], concurrency: int) -> float:
    """Run every meter's session once; the wall time."""
    gate = asyncio.Semaphore(concurrency)
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)

    async def one(meter: dict) -> None:
        async with gate:
            await _session(meter, hour)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(m) for m in meters))
    return time.perf_counter() - t0


def _cpu_self() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


async def main(args: argparse.Namespace, child: subprocess.Popen, meters: list[dict]) -> None:
    import psutil

    sim = psutil.Process(child.pid)

    def cpu_sim() -> tuple[float, float]:
        t = sim.cpu_times()
        return t.user, t.system

    profiler = cProfile.Profile(time.process_time) if args.profile_driver else None
    print(f"load average at start: {os.getloadavg()[0]:.2f} (2 cores)", flush=True)
    results = {}
    for protocol in args.protocols:
        mine = [m for m in meters if m["protocol"] == protocol]
        await _round(mine, args.concurrency)  # warm-up: first contact, column hints
        drv, simc, walls, drv_sys, sim_sys = [], [], [], [], []
        if args.profile_sim:
            child.send_signal(signal.SIGUSR1)
        for _ in range(args.rounds):
            d0, s0 = _cpu_self(), cpu_sim()
            if profiler:
                profiler.enable()
            walls.append(await _round(mine, args.concurrency))
            if profiler:
                profiler.disable()
            d1, s1 = _cpu_self(), cpu_sim()
            drv.append((sum(d1) - sum(d0)) / len(mine) * 1000)
            simc.append((sum(s1) - sum(s0)) / len(mine) * 1000)
            drv_sys.append((d1[1] - d0[1]) / len(mine) * 1000)
            sim_sys.append((s1[1] - s0[1]) / len(mine) * 1000)
        if args.profile_sim:
            child.send_signal(signal.SIGUSR2)
            assert child.stdout is not None
            child.stdout.readline()
            os.replace(args.profile_sim, f"{args.profile_sim}.{protocol}")
        results[protocol] = {
            "sessions": len(mine),
            "driver_ms_best": round(min(drv), 3),
            "driver_ms_median": round(statistics.median(drv), 3),
            "driver_ms_system": round(statistics.median(drv_sys), 3),
            "simulator_ms_best": round(min(simc), 3),
            "simulator_ms_median": round(statistics.median(simc), 3),
            "simulator_ms_system": round(statistics.median(sim_sys), 3),
            "sessions_per_s": round(len(mine) / min(walls), 1),
            "load": round(os.getloadavg()[0], 2),
        }
        print(json.dumps({"protocol": protocol, **results[protocol]}), flush=True)
    if profiler:
        profiler.dump_stats(args.profile_driver)
    print("\nCPU per session (ms): best / median of rounds (of it in the kernel, median)")
    print(f"{'protocol':<8} {'driver':>24} {'simulator':>24} {'sessions/s':>11} {'load':>6}")
    for protocol, r in results.items():
        print(
            f"{protocol:<8} {r['driver_ms_best']:>7.3f} / {r['driver_ms_median']:<7.3f}"
            f" ({r['driver_ms_system']:.3f})"
            f" {r['simulator_ms_best']:>7.3f} / {r['simulator_ms_median']:<7.3f}"
            f" ({r['simulator_ms_system']:.3f})"
            f" {r['sessions_per_s']:>11} {r['load']:>6}"
        )
    from drivers import close_shared

    await close_shared()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--meters", type=int, default=200, help="per protocol")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--protocols", nargs="+", default=["dlms", "modbus", "mqtt"])
    parser.add_argument("--mqtt-url", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--profile-driver")
    parser.add_argument("--profile-sim")
    arguments = parser.parse_args()
    if arguments.serve:
        asyncio.run(_serve(arguments))
        sys.exit(0)
    command = [sys.executable, __file__, "--serve", "--meters", str(arguments.meters)]
    command += ["--protocols", *arguments.protocols, "--mqtt-url", arguments.mqtt_url]
    if arguments.profile_sim:
        command += ["--profile-sim", arguments.profile_sim]
    env = dict(os.environ, CGM_BENCH_RUN=uuid.uuid4().hex[:8])
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line:
            raise SystemExit("the simulator process did not start")
        asyncio.run(main(arguments, child, json.loads(line)))
    finally:
        child.terminate()
        child.wait()
