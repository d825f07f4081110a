"""MQTT meters pushing their hourly entry: simulator CPU per publish, collector CPU per entry.

    .venv/bin/python benchmarks/mqtt_push.py [--meters 2000] [--rounds 3]
        [--mqtt-url mqtt://127.0.0.1:1883]
        [--database-url postgresql://postgres@127.0.0.1:5432/test]
        [--profile-collector /tmp/c.prof] [--profile-sim /tmp/s.prof]

The steady state of an MQTT fleet as ``cgm run`` lives it: every meter publishes its hourly
entry (signed) and the collector's push consumer (``cgm/collection/push.py``, the durable
QoS 1 subscription) authenticates, screens and stores it, acknowledging after the commit.
A child process serves ``--meters`` simulated MQTT meters (one gateway connection, a prefix
of the run's own); each round it publishes one past hour of every meter at once (round k:
the hour that ended k hours ago, so each round stores new rows). This process runs the
consumer against a scratch database with the fleet registered, and measures per round:

* the collector's CPU per pushed entry (this process, ``time.process_time``: the MQTT client,
  decoding, signature check, screening, the write), and PostgreSQL's (``/proc/PID/schedstat``
  of the scratch database's backends);
* the simulator's CPU per publish (the child's ``time.process_time`` from the first publish
  to the last PUBACK).

After the rounds it checks what was stored (``stored_once``): one row per meter, hour and
channel pushed, none written twice (version 1), every write batch from ``mqtt-push``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import yaml  # noqa: E402

HOUR = timedelta(hours=1)


# --- child: the simulated meters ----------------------------------------------------------


async def _serve(args: argparse.Namespace) -> None:
    from simulators.fleet import Placement, build_fleet, inventory
    from simulators.mqtt import serve as serve_mqtt

    fleet = build_fleet(max(1, args.meters // 2), seed=1, mix={"mqtt": 1.0})
    meters = [m for _, m in fleet.meters()]
    url = urlparse(args.mqtt_url)
    host, port = url.hostname or "127.0.0.1", url.port or 1883
    prefix = f"benchpush{uuid.uuid4().hex[:8]}"
    sim = await serve_mqtt(meters, host, port, prefix=prefix, push_hourly=False)
    for m in meters:
        fleet.placements[m.serial] = Placement(host, port, {"serial": m.serial,
                                                            "topic_prefix": prefix})  # fmt: skip
    Path(args.out).write_text(yaml.safe_dump(inventory(fleet)))  # noqa: ASYNC240
    print("ready", flush=True)
    prof = cProfile.Profile(time.process_time) if args.profile_sim else None
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        k = int(line.split()[1])
        now = datetime.now(UTC)
        end = now.replace(minute=0, second=0, microsecond=0) - HOUR * (k - 1)
        if prof is not None:
            prof.enable()
        cpu0 = time.process_time()
        sent = await sim.publish_hour(end)
        cpu = time.process_time() - cpu0
        if prof is not None:
            prof.disable()
        values = sum(len(e.values) for entries in sent.values() for e in entries)
        messages = sum(1 for entries in sent.values() if entries)
        print(json.dumps({"cpu": cpu, "messages": messages, "values": values}), flush=True)
    if prof is not None:
        prof.dump_stats(args.profile_sim)
    await sim.stop(clear_retained=True)


# --- parent: the collector's push consumer -----------------------------------------------


def _schedstat_ns(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
        except (OSError, ValueError):
            pass
    return total


async def _measure(args: argparse.Namespace) -> dict[str, object]:
    from cgm import registry
    from cgm.collection.push import PushConsumer
    from cgm.config import Settings
    from cgm.migrate import upgrade
    from cgm.security import secret_box

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from collect import drop_db, scratch_db

    work = Path(tempfile.mkdtemp(prefix="cgm-push-"))
    name, url = scratch_db(args.database_url)
    child = None
    try:
        upgrade(url, Settings(database_url=url))
        child = subprocess.Popen(  # noqa: ASYNC220 - started once, before measuring
            [sys.executable, __file__, "--serve", "--meters", str(args.meters),
             "--mqtt-url", args.mqtt_url, "--out", str(work / "fleet.yaml"),
             *(["--profile-sim", args.profile_sim] if args.profile_sim else [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert child.stdin is not None and child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("simulator did not start")
        box = secret_box(Settings(database_url=url, data_dir=work))
        with psycopg.connect(url) as conn:
            registry.import_inventory(
                conn, registry.load(work / "fleet.yaml"), box, actor="benchmark"
            )
        consumer = PushConsumer(url, box, collector_id="bench", client_id=f"bench-{name}")
        stop = asyncio.Event()
        task = asyncio.create_task(consumer.run(stop))
        await asyncio.wait_for(consumer.subscribed.wait(), 60)
        await asyncio.sleep(1.0)

        def backends() -> dict[int, int]:
            with psycopg.connect(url) as conn:
                pids = [r[0] for r in conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s"
                    " AND pid <> pg_backend_pid()", (name,),
                )]  # fmt: skip
            return {pid: _schedstat_ns([pid]) for pid in pids}

        prof = cProfile.Profile(time.process_time) if args.profile_collector else None
        rounds = []
        loop = asyncio.get_running_loop()
        for k in range(1, args.rounds + 1):
            load = os.getloadavg()[0]
            before = consumer.stored + consumer.refused
            pg0 = backends()
            cpu0, t0 = time.process_time(), time.perf_counter()
            if prof is not None:
                prof.enable()
            child.stdin.write(f"push {k}\n")
            child.stdin.flush()
            sent = json.loads(await loop.run_in_executor(None, child.stdout.readline))
            deadline = time.monotonic() + 300
            while consumer.stored + consumer.refused - before < sent["values"]:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"round {k}: not all pushes stored in 300 s")
                await asyncio.sleep(0.05)
            if prof is not None:
                prof.disable()
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
            pg = sum(ns - pg0.get(pid, 0) for pid, ns in backends().items()) / 1e9
            n = max(1, sent["messages"])
            rounds.append({
                "entries": sent["messages"], "values": sent["values"],
                "collector_ms_per_entry": round(1000 * cpu / n, 3),
                "postgres_ms_per_entry": round(1000 * pg / n, 3),
                "simulator_ms_per_publish": round(1000 * sent["cpu"] / n, 3),
                "wall_s": round(wall, 2), "load": round(load, 2),
            })  # fmt: skip
            print(json.dumps(rounds[-1]), flush=True)
        if prof is not None:
            prof.dump_stats(args.profile_collector)
        stop.set()
        await asyncio.wait_for(task, 30)
        child.stdin.close()
        child.wait(60)
        with psycopg.connect(url) as conn:
            rows, rewritten = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE version > 1) FROM reading"
            ).fetchone()
            other = conn.execute(
                "SELECT count(*) FROM ingest_batch WHERE source NOT LIKE 'mqtt-push:%%'"
            ).fetchone()[0]
        expected = sum(r["values"] for r in rounds)
        best = min(rounds, key=lambda r: r["collector_ms_per_entry"])
        return {
            "meters": args.meters,
            "rounds": len(rounds),
            "collector_ms_per_entry_best": best["collector_ms_per_entry"],
            "collector_ms_per_entry_median": statistics.median(
                r["collector_ms_per_entry"] for r in rounds
            ),
            "postgres_ms_per_entry_median": statistics.median(
                r["postgres_ms_per_entry"] for r in rounds
            ),
            "simulator_ms_per_publish_best": min(r["simulator_ms_per_publish"] for r in rounds),
            "simulator_ms_per_publish_median": statistics.median(
                r["simulator_ms_per_publish"] for r in rounds
            ),
            "stored_once": rows == expected - consumer.refused and rewritten == 0 and other == 0,
            "rows": rows,
            "refused": consumer.refused,
        }
    finally:
        if child is not None and child.poll() is None:
            child.kill()
        drop_db(args.database_url, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mqtt-url", default="mqtt://127.0.0.1:1883")
    parser.add_argument(
        "--database-url", default=os.environ.get(
            "CGM_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )  # fmt: skip
    parser.add_argument("--profile-collector")
    parser.add_argument("--profile-sim")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args))
        return
    result = asyncio.run(_measure(args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
