"""Collection first: a VEE run in its process waits between its steps while the service's
collector is in a cycle (cgm.foreground), up to a bound, and the wait is counted."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from contextlib import nullcontext
from datetime import UTC, date, datetime

import psycopg
import pytest

from cgm import foreground
from cgm.vee.worker import VeeWorker
from tests.vee.conftest import load, make_frontier, put, settled

DAY = date(2026, 5, 19)
NOW = datetime(2026, 6, 1, tzinfo=UTC)


def _yielded() -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("cgm_vee_yield_seconds_total") or 0.0


def _busy_in_another_process(fd: int) -> str:
    code = "import sys; from cgm.foreground import Watcher; print(Watcher(int(sys.argv[1])).busy())"
    out = subprocess.run(
        [sys.executable, "-c", code, str(fd)],
        capture_output=True,
        text=True,
        check=True,
        pass_fds=(fd,),
    )
    return out.stdout.strip()


def test_another_process_sees_the_mark_while_a_cycle_runs() -> None:
    fd = foreground.share()
    assert os.fstat(fd).st_nlink == 0  # no file left behind, however the service ends
    try:
        assert _busy_in_another_process(fd) == "False"
        with foreground.running():
            with foreground.running():  # an on-demand cycle during the scheduled one
                assert foreground.busy() == 2
            assert _busy_in_another_process(fd) == "True"  # the first still runs
        assert _busy_in_another_process(fd) == "False"
        try:
            with foreground.running():
                raise RuntimeError("a cycle that fails")
        except RuntimeError:
            pass
        assert foreground.busy() == 0 and _busy_in_another_process(fd) == "False"
    finally:
        foreground.unshare(fd)
    with pytest.raises(OSError):
        os.fstat(fd)


async def _waiting_run(db_url: str, timeout: float = 120.0) -> str:
    """The VEE process's last query once its session sits idle inside the run after its
    first step (the registry read), where it first steps aside."""
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            cur = await c.execute(
                """SELECT query FROM pg_stat_activity WHERE application_name = 'cgm vee'
                     AND state = 'idle in transaction' AND datname = current_database()"""
            )
            row = await cur.fetchone()
            if row and "FROM frontier f JOIN meter m" in row[0]:
                return row[0]
            await asyncio.sleep(0.05)
    raise AssertionError("the VEE run never started")


async def _last_query(db_url: str) -> tuple[str, str] | None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
        cur = await c.execute(
            """SELECT state, query FROM pg_stat_activity WHERE application_name = 'cgm vee'
                 AND datname = current_database()"""
        )
        return await cur.fetchone()


async def test_a_run_waits_for_the_cycle_to_end_then_settles(db_url: str, conn) -> None:
    f = await make_frontier(conn)
    await put(conn, f.principal, DAY, load(f, DAY))
    worker = VeeWorker(db_url, yield_max_s=120.0)
    await worker.start()
    before = _yielded()
    try:
        with foreground.running():
            run = worker.run_day(DAY, f.code, now=NOW)
            query = await _waiting_run(db_url)
            await asyncio.sleep(1.5)
            # Still where it stopped: same query, in its transaction, nothing written.
            assert await _last_query(db_url) == ("idle in transaction", query)
            assert not run.done() and await settled(conn, f, DAY) == []
        summary = await asyncio.wait_for(run, 120)
    finally:
        await worker.stop()
    assert summary.values == 24 and summary.by_source["principal"] == 24
    assert [r[1] for r in await settled(conn, f, DAY)] == ["principal"] * 24
    assert _yielded() - before > 0  # the wait reached the service's metrics


async def test_a_run_never_waits_longer_than_the_bound(db_url: str, conn) -> None:
    f = await make_frontier(conn)
    await put(conn, f.principal, DAY, load(f, DAY), skip=[7])
    worker = VeeWorker(db_url, yield_max_s=0.2)
    await worker.start()
    before = _yielded()
    try:
        with foreground.running():  # a cycle that outlasts the whole run
            summary = await asyncio.wait_for(worker.run_day(DAY, f.code, now=NOW), 120)
    finally:
        await worker.stop()
    assert summary.by_source == {"principal": 23, "estimate": 1}
    waited = _yielded() - before
    # It stepped aside at each of its steps, each time for the bound and no longer.
    assert waited >= 0.2 * 3
    assert waited < summary.seconds


async def test_no_wait_without_a_cycle_or_with_the_bound_zero(db_url: str, conn) -> None:
    idle = VeeWorker(db_url)  # no cycle running
    off = VeeWorker(db_url, yield_max_s=0.0)  # never steps aside
    before = _yielded()
    for worker in (idle, off):
        f = await make_frontier(conn)
        await put(conn, f.principal, DAY, load(f, DAY))
        await worker.start()
        try:
            with foreground.running() if worker is off else nullcontext():
                summary = await asyncio.wait_for(worker.run_day(DAY, f.code, now=NOW), 120)
        finally:
            await worker.stop()
        assert summary.values == 24
    assert _yielded() == pytest.approx(before)
