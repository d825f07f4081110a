"""A/B of how many parts a large VEE run is settled and written in
(``cgm.vee.run._PARTS``), at the same moment, alternating: on a host whose speed drifts
the only fair comparison.

    .venv/bin/python benchmarks/vee_parts_ab.py DB_URL [--parts 1,4] [--rounds 3]
        [--worker-setting]

DB_URL is a database kept by ``benchmarks/vee.py --keep`` (10,000 frontiers); each run is a
first settle of its day (the day removed, then a checkpoint and a sync, before it).
``--worker-setting``: this process and the backends it opens as the VEE worker runs them in
``cgm run`` by default (nice +10, off the first CPU; cgm.vee.priority).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).parent))
from vee import DAY, NOW, forget_day, quiet_disk  # noqa: E402 - benchmarks/vee.py

from cgm.vee import priority  # noqa: E402
from cgm.vee import run as vee_run  # noqa: E402
from cgm.vee.config import VeeConfig  # noqa: E402


async def main(url: str, variants: list[int], rounds: int, worker_setting: bool) -> None:
    if worker_setting:
        priority.lower_process("low", 1)
    walls: dict[int, list[float]] = {v: [] for v in variants}
    for _ in range(rounds):
        for parts in variants:
            vee_run._PARTS = parts
            await forget_day(url)
            await quiet_disk(url)
            async with await psycopg.AsyncConnection.connect(url) as conn:
                priority.follow(conn)
                t0 = time.perf_counter()
                s = await vee_run.run_vee(conn, DAY, config=VeeConfig(), now=NOW)
                walls[parts].append(time.perf_counter() - t0)
            print(f"{parts} part(s): {walls[parts][-1]:.1f} s ({s.written} values)", flush=True)
    for parts, w in walls.items():
        runs = ", ".join(f"{x:.1f}" for x in w)
        print(f"{parts} part(s): median {np.median(w):.1f} s of {runs}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("--parts", default="1,4", help="comma-separated part counts")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--worker-setting", action="store_true")
    a = ap.parse_args()
    asyncio.run(main(a.url, [int(x) for x in a.parts.split(",")], a.rounds, a.worker_setting))
