"""VEE off the service's loop: the worker runs on its own thread and connection, so the
API keeps answering while a run is busy (even one that holds its thread, as CPU-bound
numpy work does), and the run's result is the same as on the loop."""

from __future__ import annotations

import asyncio
import socket
import threading
from datetime import UTC, date, datetime

import httpx
import psycopg
import pytest

from cgm.api import install
from cgm.config import Settings
from cgm.service import Service
from cgm.vee import run_vee
from cgm.vee.worker import VeeWorker
from tests.vee.conftest import load, make_frontier, put, settled

DAY = date(2026, 5, 19)
NOW = datetime(2026, 6, 1, tzinfo=UTC)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_api_answers_while_the_vee_worker_is_busy(db_url: str, conn) -> None:
    f = await make_frontier(conn)
    await put(conn, f.principal, DAY, load(f, DAY))
    port = _free_port()
    svc = Service(Settings(database_url=db_url, api_host="127.0.0.1", api_port=port))
    svc.db_url = db_url
    install(svc)
    worker = VeeWorker(db_url)
    worker.start()
    release = threading.Event()
    seen: dict[str, object] = {}

    async def busy(c: psycopg.AsyncConnection):
        # Hold the worker's thread the way a long numpy stretch would, then settle.
        seen["thread"] = threading.current_thread().name
        release.wait(60)
        return await run_vee(c, DAY, f.code, now=NOW)

    for hook in svc.on_start:
        await hook(svc)
    try:
        run = worker.submit(busy)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            answers = [(await c.get("/healthz")).json()["database"] for _ in range(5)]
        assert answers == [True] * 5
        assert not run.done()  # the API answered while the run was in progress
        release.set()
        summary = await asyncio.wait_for(run, 60)
    finally:
        release.set()
        for hook in reversed(svc.on_stop):
            await hook(svc)
        await worker.stop()
    assert seen["thread"] == "cgm-vee" != threading.current_thread().name
    assert summary.values == 24 and summary.by_source["principal"] == 24
    assert [r[1] for r in await settled(conn, f, DAY)] == ["principal"] * 24


async def test_worker_runs_are_serial_and_survive_a_failed_one(db_url: str, conn) -> None:
    f = await make_frontier(conn)
    await put(conn, f.principal, DAY, load(f, DAY))
    worker = VeeWorker(db_url)
    worker.start()
    order: list[str] = []

    async def slow(c: psycopg.AsyncConnection) -> None:
        order.append("slow start")
        await asyncio.sleep(0.2)
        order.append("slow end")

    async def fails(c: psycopg.AsyncConnection) -> None:
        order.append("fails")
        await c.execute("SELECT 1/0")

    async def fast(c: psycopg.AsyncConnection) -> None:
        order.append("fast")

    try:
        a, b, c_ = worker.submit(slow), worker.submit(fails), worker.submit(fast)
        await a
        with pytest.raises(psycopg.errors.DivisionByZero):
            await b
        await c_
        summary = await worker.submit(lambda c: run_vee(c, DAY, f.code, now=NOW))
    finally:
        await worker.stop()
    assert order == ["slow start", "slow end", "fails", "fast"]
    assert summary.written == 24


async def test_cgm_run_hands_each_cycle_to_the_worker(db_url: str, conn, monkeypatch) -> None:
    """The after-cycle hook of ``cgm run`` returns at once; the worker settles the cycle."""
    from cgm.collection.engine import CycleSummary
    from cgm.commands.run import build_service

    monkeypatch.setenv("CGM_DATABASE_URL", db_url)
    monkeypatch.setenv("CGM_API_PORT", "0")
    svc = build_service()
    svc.db_url = db_url
    worker = svc.vee  # type: ignore[attr-defined]
    assert isinstance(worker, VeeWorker)
    start_vee = next(h for h in svc.on_start if h.__name__ == "start_vee")
    await start_vee(svc)
    try:
        hook = svc.collection.after_cycle[-1]  # type: ignore[attr-defined]
        await hook(CycleSummary(datetime(2026, 5, 20, 13, tzinfo=UTC)))  # returns at once
        # The hook's run is queued on the worker; a run after it finishes after it.
        done = await worker.submit(lambda c: asyncio.sleep(0, result="after"))
        assert done == "after"
    finally:
        await worker.stop()
