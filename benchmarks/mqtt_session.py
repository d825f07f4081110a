"""MQTT session time and collector CPU per session, through a real broker.

    .venv/bin/python benchmarks/mqtt_session.py [--meters 200] [--concurrency 1 16 64]
        [--mqtt-url mqtt://127.0.0.1:1883 | --mosquitto]

``--mosquitto`` starts a private Mosquitto with the broker settings of
``deploy/mosquitto/mosquitto.conf`` that matter here (``set_tcp_nodelay``, in-flight and
queue limits), anonymous, on a free port.

Serves ``--meters`` simulated meters from one gateway client, then runs each meter's
steady-state session as the collector does (connect and hello, identify, clock, profile
configuration, one hour of profile, registers, close), ``--meters`` sessions at each
concurrency. Prints p50/p95 session time and the process CPU per session. The simulator
runs in the same process, so the CPU figure includes it; the session time is what a
collector waits for.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from cgm.service import mqtt_address  # noqa: E402
from drivers.base import AccessLevel, Credentials, Endpoint  # noqa: E402
from drivers.mqtt import DRIVER  # noqa: E402
from simulators.meter import SimulatedMeter  # noqa: E402
from simulators.mqtt import serve  # noqa: E402


async def one_session(broker: tuple[str, int], prefix: str, serial: str) -> float:
    t0 = time.perf_counter()
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    session = await DRIVER.connect(
        Endpoint(*broker),
        Credentials(AccessLevel.READ, "reader-1", client="bench"),
        {"serial": serial, "topic_prefix": prefix},
        timeout=30,
    )
    async with session:
        await session.identify()
        await session.read_clock()
        await session.read_profile_config()
        await session.read_profile(hour - timedelta(hours=1), hour)
        await session.read_registers()
    return time.perf_counter() - t0


def start_mosquitto(folder: Path) -> tuple[subprocess.Popen, tuple[str, int]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parent.parent
    deploy = (root / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    keep = [ln for ln in deploy.splitlines()
            if ln.split(" ")[0] in ("set_tcp_nodelay", "max_inflight_messages",
                                    "max_queued_messages", "max_packet_size")]  # fmt: skip
    conf = folder / "mosquitto.conf"
    conf.write_text("\n".join([f"listener {port} 127.0.0.1", "allow_anonymous true", *keep,
                                "user root", ""]))  # fmt: skip
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, ("127.0.0.1", port)


async def main(args: argparse.Namespace) -> None:
    proc = None
    if args.mosquitto:
        proc, broker = start_mosquitto(Path(tempfile.mkdtemp()))
        print(f"private mosquitto on port {broker[1]} with: set_tcp_nodelay, limits of deploy/")
    else:
        broker = mqtt_address(args.mqtt_url)
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    meters = [SimulatedMeter(f"B-{i:05d}", seed=i) for i in range(args.meters)]
    sim = await serve(meters, *broker, prefix=prefix, push_hourly=False)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    try:
        await one_session(broker, prefix, meters[0].serial)  # warm-up
        for conc in args.concurrency:
            gate = asyncio.Semaphore(conc)

            async def bounded(serial: str, gate: asyncio.Semaphore = gate) -> float:
                async with gate:
                    return await one_session(broker, prefix, serial)

            cpu0, t0 = time.process_time(), time.perf_counter()
            times = await asyncio.gather(*(bounded(m.serial) for m in meters))
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
            p50, p95 = np.percentile(times, [50, 95])
            print(
                f"concurrency={conc} sessions={len(times)} wall_s={wall:.2f} "
                f"sessions_per_s={len(times) / wall:.1f} session_p50_s={p50:.3f} "
                f"session_p95_s={p95:.3f} cpu_ms_per_session={1000 * cpu / len(times):.2f} "
                f"load={os.getloadavg()[0]:.2f}"
            )
    finally:
        await sim.stop(clear_retained=True)
        close = getattr(DRIVER, "close_all", None)
        if close is not None:
            await close()
        if proc is not None:
            proc.terminate()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--meters", type=int, default=200)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--mqtt-url", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--mosquitto", action="store_true", help="start a private Mosquitto")
    asyncio.run(main(parser.parse_args()))
