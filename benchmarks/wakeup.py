"""What a first settle on the VEE worker costs a normal-priority task on the same host: how
late a 1 ms timer wakes it, a bare ``SELECT 1``'s round trip, and a one-row ``INSERT``'s
commit (which waits for the WAL to be flushed up to it, VEE's included) — idle and during
the run, for each VEE CPU priority.

    .venv/bin/python benchmarks/wakeup.py --reuse DBNAME [--database-url URL]
        [--priorities idle,low,normal] [--repeat 3] [--pin-cpu 0]

DBNAME is a database kept by ``benchmarks/vee.py --keep`` (10,000 frontiers). Each repeat of
each priority: the day's settled values are removed (``vee.forget_day``), the disk quietened,
then a probe thread measures for 8 s idle and for the length of a first settle on a
``VeeWorker`` started at that priority. ``--pin-cpu`` keeps the probe on one CPU (the one
VEE is kept off), which shows whether a late wake-up is the scheduler's choice of CPU.

Why it exists: the API's p99 under a VEE run was ~2× idle with the worker at ``SCHED_IDLE``,
although the service's processes got the CPU time they got idle. This isolates the
scheduler's part of that from the API and the disk (benchmarks/README.md, "VEE's CPU
priority on a slower host").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time
from pathlib import Path

import numpy as np
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from vee import DAY, DEFAULT_URL, NOW, forget_day, quiet_disk  # benchmarks/vee.py

from cgm.vee.worker import VeeWorker

IDLE_SECONDS = 8.0
TICK = 0.001


def _last_cpu() -> int:
    """The CPU this thread last ran on (field 39 of its stat)."""
    stat = Path(f"/proc/self/task/{threading.get_native_id()}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[36])


def probe(url: str, stop: threading.Event, pin: int | None, out: dict) -> None:
    """Until ``stop``: sleep 1 ms (oversleep recorded, and the CPU it woke on), then one
    ``SELECT 1`` and one committed one-row ``INSERT`` (their round trips recorded)."""
    if pin is not None:
        os.sched_setaffinity(0, {pin})
    late, rtt, commit, cpus = [], [], [], []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS wakeup_probe (at timestamptz)")
        while not stop.is_set():
            t0 = time.perf_counter()
            time.sleep(TICK)
            late.append(time.perf_counter() - t0 - TICK)
            cpus.append(_last_cpu())
            t0 = time.perf_counter()
            conn.execute("SELECT 1")
            rtt.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            conn.execute("INSERT INTO wakeup_probe VALUES (now())")
            commit.append(time.perf_counter() - t0)
        conn.execute("TRUNCATE wakeup_probe")
    out.update(late=np.array(late), rtt=np.array(rtt), commit=np.array(commit), cpus=np.array(cpus))


def _measure(url: str, pin: int | None) -> tuple[threading.Event, dict, threading.Thread]:
    stop, out = threading.Event(), {}
    t = threading.Thread(target=probe, args=(url, stop, pin, out))
    t.start()
    return stop, out, t


def _line(what: str, out: dict) -> str:
    ms = {k: np.percentile(out[k], [50, 99]) * 1e3 for k in ("late", "rtt", "commit")}
    share = np.bincount(out["cpus"], minlength=os.cpu_count() or 1) / len(out["cpus"]) * 100
    return (
        f"  {what:<5} wake-up late p50 {ms['late'][0]:.3f} p99 {ms['late'][1]:.3f} ms; "
        f"SELECT 1 p50 {ms['rtt'][0]:.3f} p99 {ms['rtt'][1]:.3f} ms; "
        f"commit p50 {ms['commit'][0]:.2f} p99 {ms['commit'][1]:.2f} ms; "
        f"{len(out['late'])} samples; woke on CPU 0, 1, … "
        + ", ".join(f"{x:.0f}" for x in share)
        + " %"
    )


async def one(url: str, priority: str, reserve: int, pin: int | None) -> dict[str, float]:
    await forget_day(url)
    await quiet_disk(url)
    worker = VeeWorker(url, priority=priority, reserve_cpus=reserve)  # type: ignore[arg-type]
    await worker.start()
    try:
        stop, idle, t = _measure(url, pin)
        await asyncio.sleep(IDLE_SECONDS)
        stop.set()
        await asyncio.to_thread(t.join)
        stop, busy, t = _measure(url, pin)
        t0 = time.perf_counter()
        await worker.run_day(DAY, now=NOW)
        wall = time.perf_counter() - t0
        stop.set()
        await asyncio.to_thread(t.join)
    finally:
        await worker.stop()
    print(f" {priority}: first settle {wall:.1f} s")
    print(_line("idle", idle))
    print(_line("VEE", busy))
    ratio = {
        k: float(np.percentile(busy[k], 99) / np.percentile(idle[k], 99))
        for k in ("late", "rtt", "commit")
    }
    return {**ratio, "wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--database-url", default=DEFAULT_URL)
    ap.add_argument("--reuse", required=True, metavar="DBNAME")
    ap.add_argument("--priorities", default="idle,low")
    ap.add_argument("--reserve-cpus", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pin-cpu", type=int, default=None)
    args = ap.parse_args()
    params = conninfo_to_dict(args.database_url)
    params["dbname"] = args.reuse
    url = make_conninfo(**params)
    print(f"{os.uname().release}, {os.cpu_count()} CPU; probe pinned to {args.pin_cpu}")
    results: dict[str, list[dict[str, float]]] = {}
    for _ in range(args.repeat):
        for priority in args.priorities.split(","):
            r = asyncio.run(one(url, priority, args.reserve_cpus, args.pin_cpu))
            results.setdefault(priority, []).append(r)
    print("medians over the repeats (during VEE / idle, of the p99s):")
    for priority, rs in results.items():
        med = {k: float(np.median([r[k] for r in rs])) for k in rs[0]}
        print(
            f"  {priority:<6} wake-up late {med['late']:.2f}×, SELECT 1 {med['rtt']:.2f}×, "
            f"commit {med['commit']:.2f}×, "
            f"first settle {med['wall']:.1f} s"
        )


if __name__ == "__main__":
    main()
