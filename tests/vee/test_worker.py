"""VEE off the service's loop: runs go to a child process with its own connection, so the
API keeps answering while a run is busy; errors come back and are logged; a dead child is
replaced; stopping (or killing) the service leaves no VEE process behind; the run's metrics
reach the service's registry."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime

import httpx
import psycopg
import pytest

from cgm import metrics
from cgm.api import install
from cgm.config import Settings
from cgm.service import Service
from cgm.vee import VeeSummary
from cgm.vee.worker import VeeWorker, VeeWorkerError, log_summary
from tests.vee.conftest import load, make_frontier, put, settled

DAY = date(2026, 5, 19)
NOW = datetime(2026, 6, 1, tzinfo=UTC)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _blocked_on_settled(db_url: str, timeout: float = 120.0) -> None:
    """Wait until the VEE process's session waits for the lock on ``settled_reading``."""
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            cur = await c.execute(
                """SELECT count(*) FROM pg_stat_activity WHERE application_name = 'cgm vee'
                     AND wait_event_type = 'Lock' AND datname = current_database()"""
            )
            if (await cur.fetchone())[0]:  # type: ignore[index]
                return
            await asyncio.sleep(0.1)
    raise AssertionError("the VEE run never reached its write")


async def _hold_settled(db_url: str) -> psycopg.AsyncConnection:
    """A transaction holding settled_reading against writes (reads go on)."""
    lock = await psycopg.AsyncConnection.connect(db_url)
    await lock.execute("LOCK TABLE settled_reading IN EXCLUSIVE MODE")
    return lock


@asynccontextmanager
async def _run_at_its_write(
    db_url: str, conn: psycopg.AsyncConnection
) -> AsyncIterator[tuple[VeeWorker, asyncio.Future[VeeSummary], psycopg.AsyncConnection, str]]:
    """A worker whose run of a frontier's day waits at its write for a lock the test holds:
    (the worker, the run, the lock's connection (roll it back to let the run go on), the
    frontier's code)."""
    f = await make_frontier(conn)
    await put(conn, f.principal, DAY, load(f, DAY))
    worker = VeeWorker(db_url)
    await worker.start()
    lock = await _hold_settled(db_url)
    run = asyncio.ensure_future(worker.run_day(DAY, f.code, now=NOW))
    try:
        await _blocked_on_settled(db_url)
        yield worker, run, lock, f.code
    finally:
        await lock.close()
        await worker.stop()
        await asyncio.gather(run, return_exceptions=True)


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def test_api_answers_while_the_vee_process_settles(db_url: str, conn) -> None:
    f = await make_frontier(conn)
    await put(conn, f.principal, DAY, load(f, DAY))
    port = _free_port()
    svc = Service(Settings(database_url=db_url, api_host="127.0.0.1", api_port=port))
    svc.db_url = db_url
    install(svc)
    worker = VeeWorker(db_url)
    await worker.start()
    assert worker.pid is not None and worker.pid != os.getpid()
    for hook in svc.on_start:
        await hook(svc)
    lock = await _hold_settled(db_url)
    try:
        run = worker.run_day(DAY, f.code, now=NOW)
        # The run is in its write, held by the lock, in another process.
        await _blocked_on_settled(db_url)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            answers = [(await c.get("/healthz")).json()["database"] for _ in range(5)]
        assert answers == [True] * 5
        assert not run.done()  # the API answered while the run was in progress
        await lock.rollback()
        summary = await asyncio.wait_for(run, 120)
    finally:
        await lock.close()
        for hook in reversed(svc.on_stop):
            await hook(svc)
        await worker.stop()
    assert summary.values == 24 and summary.by_source["principal"] == 24
    assert [r[1] for r in await settled(conn, f, DAY)] == ["principal"] * 24


async def test_errors_come_back_logged_and_the_next_run_goes_on(db_url: str, conn, caplog) -> None:
    f = await make_frontier(conn)
    await put(conn, f.principal, DAY, load(f, DAY))
    worker = VeeWorker(db_url)
    await worker.start()
    try:
        bad = worker.run_day(DAY, "Frt-nonexistent", now=NOW)
        good = worker.run_day(DAY, f.code, now=NOW)
        with pytest.raises(VeeWorkerError) as err:
            await bad
        assert err.value.kind == "LookupError" and "Frt-nonexistent" in err.value.message
        assert "Traceback" in err.value.remote_traceback
        with caplog.at_level(logging.ERROR, logger="cgm.vee.worker"):
            log_summary(bad)
        assert "VEE run failed: LookupError" in caplog.text
        assert (await good).written == 24  # same process, next job
    finally:
        await worker.stop()


async def test_a_dead_vee_process_fails_its_run_and_is_replaced(db_url: str, conn) -> None:
    async with _run_at_its_write(db_url, conn) as (worker, run, lock, code):
        first = worker.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        with pytest.raises(VeeWorkerError) as err:
            await asyncio.wait_for(run, 60)
        assert err.value.kind == "ProcessExited"
        await lock.rollback()
        summary = await worker.run_day(DAY, code, now=NOW)
        assert worker.pid not in (None, first)
    assert summary.written == 24
    assert _gone(first)


async def test_ctrl_c_leaves_the_vee_process_to_finish_its_run_and_stop_cleanly(
    db_url: str, conn, capfd
) -> None:
    """Ctrl-C at the terminal of ``cgm run`` signals the VEE process too (one process
    group): the run in hand is finished, and the service's stop ends it, no traceback."""
    async with _run_at_its_write(db_url, conn) as (worker, run, lock, _):
        pid = worker.pid
        assert pid is not None
        os.kill(pid, signal.SIGINT)
        await asyncio.sleep(0.5)
        assert not _gone(pid)
        await lock.rollback()
        summary = await asyncio.wait_for(run, 60)
    assert summary.written == 24 and worker.pid is None and _gone(pid)
    assert "Traceback" not in capfd.readouterr().err


async def test_stop_ends_the_vee_process(db_url: str) -> None:
    worker = VeeWorker(db_url)
    await worker.start()
    pid = worker.pid
    assert pid is not None
    done = worker.run_pairs([])  # given before stop: finished, not dropped
    await worker.stop()
    assert (await done).values == 0
    assert worker.pid is None and _gone(pid)


def test_no_vee_process_outlives_a_killed_service(db_url: str) -> None:
    """kill -9 of the service: its VEE process ends by itself (it watches its parent)."""
    script = (
        "import asyncio, sys\n"
        "from cgm.vee.worker import VeeWorker\n"
        "async def main():\n"
        f"    w = VeeWorker({db_url!r})\n"
        "    await w.start()\n"
        "    print(w.pid, flush=True)\n"
        "    await asyncio.sleep(600)\n"
        "asyncio.run(main())\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())  # type: ignore[union-attr]
        assert not _gone(child)
    finally:
        parent.kill()
        parent.wait(30)
    deadline = time.monotonic() + 30
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(child)


async def test_the_runs_metrics_reach_the_service(db_url: str, conn) -> None:
    f = await make_frontier(conn)
    raw = load(f, DAY)
    await put(conn, f.principal, DAY, raw, skip=[4])
    written = metrics.VEE_VALUES_WRITTEN.labels("principal")
    estimated = metrics.VEE_VALUES_WRITTEN.labels("estimate")
    missing = metrics.VEE_FLAGS.labels("missing")
    before = (written._value.get(), estimated._value.get(), missing._value.get())
    worker = VeeWorker(db_url)
    await worker.start()
    try:
        s = await worker.run_day(DAY, f.code, now=NOW)
        again = await worker.run_day(DAY, f.code, now=NOW)  # counted once, not twice
    finally:
        await worker.stop()
    assert s.by_source == {"principal": 23, "estimate": 1} and again.written == 0
    after = (written._value.get(), estimated._value.get(), missing._value.get())
    # "missing" counts per run: the principal's hole and the backup's 24 (no readings), twice.
    assert [a - b for a, b in zip(after, before, strict=True)] == [23, 1, 50]
    assert metrics.VEE_RUN_SECONDS._value.get() == pytest.approx(again.seconds, rel=1e-9)


async def test_cgm_run_hands_each_cycle_to_the_vee_process(db_url: str, monkeypatch) -> None:
    """The after-cycle hook of ``cgm run`` returns at once; the process settles the cycle."""
    from cgm.collection.engine import CycleSummary
    from cgm.commands.run import build_service

    monkeypatch.setenv("CGM_DATABASE_URL", db_url)
    monkeypatch.setenv("CGM_API_PORT", "0")
    svc = build_service()
    svc.db_url = db_url
    worker = svc.vee  # type: ignore[attr-defined]
    assert isinstance(worker, VeeWorker)
    start_vee = next(h for h in svc.on_start if h.__name__ == "start_vee")
    stop_vee = next(h for h in svc.on_stop if h.__name__ == "stop_vee")
    await start_vee(svc)
    pid = worker.pid
    try:
        hook = svc.collection.after_cycle[-1]  # type: ignore[attr-defined]
        await hook(CycleSummary(datetime(2026, 5, 20, 13, tzinfo=UTC)))  # returns at once
        (queued,) = worker._pending
        # The hook's run is queued in the process; a run after it finishes after it.
        later = worker.run_pairs([])
        assert (await later).values == 0 and queued.done()
        assert (await queued).days == []  # that cycle read nothing
    finally:
        await stop_vee(svc)
    assert pid is not None and _gone(pid)
