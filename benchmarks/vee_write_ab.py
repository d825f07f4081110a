"""A/B of the settled write path at the same moment — on a loaded host the only fair
comparison: the previous ``write_settled`` (per-row objects and text COPY, taken from git at
``BEFORE_REV``) with the per-row foreign keys restored, against the array path without them.

    .venv/bin/python benchmarks/vee_write_ab.py [URL] [FRONTIERS]

FRONTIERS × 4 channels × 24 h plain measured values, two rounds; a scratch database on URL
(default postgresql://127.0.0.1:5432/test), dropped after.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cgm.config import Settings
from cgm.migrate import upgrade
from cgm.storage import SettledValue
from cgm.storage.settled import measured_array, write_settled

BEFORE_REV = "ec9b46f"  # the last commit with the row-by-row settled write path


def old_module():
    src = subprocess.run(
        ["git", "show", f"{BEFORE_REV}:cgm/storage/settled.py"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "old_settled.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_settled", path)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["old_settled"] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    mod.SettledValue = SettledValue  # the same value class for both
    return mod


async def run(url: str, n: int) -> None:
    old = old_module()
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await conn.execute(
            """INSERT INTO frontier (code, name, kind, voltage_level, point_type)
               SELECT 'Frt' || (200000 + g), 'ab', 'commercialisation', 2, 2
               FROM generate_series(1, %s) g""",
            (n,),
        )
        await conn.commit()
        cur = await conn.execute("SELECT id FROM frontier ORDER BY id")
        fids = [r[0] for r in await cur.fetchall()]
        t0 = int(datetime(2026, 3, 10, 5, tzinfo=UTC).timestamp())
        f = np.repeat(fids, 96)
        c = np.tile(np.repeat(np.arange(1, 5), 24), n)
        t = (t0 + np.tile(np.arange(24), 4 * n) * 3600) * 1_000_000
        raw = np.round(np.random.default_rng(1).uniform(0.1, 3, len(f)), 3)
        arr = measured_array(
            frontier_id=f,
            channel=c,
            interval_start=t,
            value=raw * 40,
            source=1,
            flags=0,
            meter_id=7,
            reading_version=1,
            secondary=raw,
            factor=40.0,
        )
        objs = [
            SettledValue(
                int(a),
                int(b),
                datetime.fromtimestamp(int(x) // 1_000_000, UTC),
                float(v),
                "principal",
                None,
                0,
                {"meter_id": 7, "reading_version": 1, "secondary": float(s), "factor": 40.0},
            )
            for a, b, x, v, s in zip(f, c, t, raw * 40, raw, strict=True)
        ]

        async def clear(fk: bool) -> None:
            await conn.execute("ALTER TABLE settled_reading DISABLE TRIGGER USER")
            await conn.execute("DELETE FROM settled_reading")
            await conn.execute("ALTER TABLE settled_reading ENABLE TRIGGER USER")
            await conn.execute(
                "ALTER TABLE settled_reading DROP CONSTRAINT IF EXISTS ab_f,"
                " DROP CONSTRAINT IF EXISTS ab_c"
            )
            if fk:
                await conn.execute(
                    "ALTER TABLE settled_reading"
                    " ADD CONSTRAINT ab_f FOREIGN KEY (frontier_id) REFERENCES frontier (id),"
                    " ADD CONSTRAINT ab_c FOREIGN KEY (channel) REFERENCES channel (id)"
                )
            await conn.commit()
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c2:
                await c2.execute("VACUUM settled_reading")

        for rnd in range(2):
            await clear(True)
            s0 = time.perf_counter()
            await old.write_settled(conn, objs, actor="vee")
            await conn.commit()
            before = time.perf_counter() - s0
            await clear(False)
            s0 = time.perf_counter()
            await write_settled(conn, measured=arr, actor="vee")
            await conn.commit()
            now = time.perf_counter() - s0
            s0 = time.perf_counter()
            again = await write_settled(conn, measured=arr, actor="vee")
            await conn.commit()
            rerun = time.perf_counter() - s0
            print(
                f"round {rnd}: {len(arr)} values: before {before:.1f} s, now {now:.1f} s,"
                f" unchanged re-write {rerun:.1f} s ({again.unchanged} unchanged);"
                f" load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )


def main() -> None:
    server = sys.argv[1] if len(sys.argv) > 1 else "postgresql://127.0.0.1:5432/test"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    name = f"cgm_ab_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(server, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(server)
    params["dbname"] = name
    url = make_conninfo(**params)
    try:
        upgrade(url, Settings(database_url=url))
        asyncio.run(run(url, n))
    finally:
        with psycopg.connect(server, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
