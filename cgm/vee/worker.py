"""VEE away from the service's event loop.

A run over a large fleet loads millions of rows and does seconds of numpy work; on the
loop that serves the API and drives the collector it would stall both for that long. The
worker is one thread with its own event loop and its own database connection: the
service hands it work and goes on (the await is on a future, not on the run), and runs
are done one at a time, in the order given, so two runs never settle the same day at once.

A thread rather than a process: the run's heavy parts (the database, numpy) release the
GIL, and a thread keeps the VEE's Prometheus metrics in the process that serves them.
benchmarks/vee.py measures the API and the collector while a 10,000-frontier run goes on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

import psycopg

from cgm.vee.config import VeeConfig
from cgm.vee.run import VeeSummary, vee_after_collection

log = logging.getLogger(__name__)
T = TypeVar("T")


class VeeWorker:
    """A dedicated thread with its own event loop and connection for VEE runs."""

    def __init__(self, db_url: str, config: VeeConfig | None = None) -> None:
        self.db_url = db_url
        self.config = config or VeeConfig()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._conn: psycopg.AsyncConnection | None = None
        self._lock: asyncio.Lock | None = None
        self._pending: set[concurrent.futures.Future] = set()

    def start(self) -> None:
        if self._thread is not None:
            return
        ready = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            self._lock = asyncio.Lock()
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=main, name="cgm-vee", daemon=True)
        self._thread.start()
        ready.wait()

    def submit(self, work: Callable[[psycopg.AsyncConnection], Awaitable[T]]) -> asyncio.Future[T]:
        """Run ``work(conn)`` on the worker (after the runs already given) and return an
        awaitable for its result from the caller's loop."""
        if self._loop is None:
            raise RuntimeError("VeeWorker not started")
        fut = asyncio.run_coroutine_threadsafe(self._serial(work), self._loop)
        self._pending.add(fut)
        fut.add_done_callback(self._pending.discard)
        return asyncio.wrap_future(fut)

    def after_collection(self, cycle: datetime, now: datetime | None = None) -> asyncio.Future:
        """Settle the days collection cycle ``cycle`` stored readings for."""

        async def work(conn: psycopg.AsyncConnection) -> VeeSummary:
            return await vee_after_collection(conn, cycle, config=self.config, now=now)

        return self.submit(work)

    async def _serial(self, work: Callable[[psycopg.AsyncConnection], Awaitable[T]]) -> T:
        assert self._lock is not None
        async with self._lock:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = await psycopg.AsyncConnection.connect(self.db_url)
            try:
                return await work(self._conn)
            except BaseException:
                if not self._conn.closed:
                    await self._conn.rollback()
                raise

    async def stop(self, timeout: float = 60.0) -> None:
        """Let the runs already given finish (up to ``timeout`` s), then end the thread."""
        if self._loop is None or self._thread is None:
            return
        pending = [asyncio.wrap_future(f) for f in list(self._pending)]
        if pending:
            done, late = await asyncio.wait(pending, timeout=timeout)
            for f in late:
                f.cancel()
        loop = self._loop

        async def close() -> None:
            if self._conn is not None:
                await self._conn.close()

        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(close(), loop))
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(self._thread.join, timeout)
        self._loop = self._thread = None


def log_summary(fut: asyncio.Future) -> None:
    """Done-callback for a run nobody awaits: its outcome goes to the log."""
    if fut.cancelled():
        return
    exc = fut.exception()
    if exc is not None:
        log.error("VEE run failed: %s", exc, exc_info=exc)
        return
    s: VeeSummary = fut.result()
    log.info(
        "VEE %s: %d values, %d written, %d estimated, %d unsettled in %.1f s",
        ", ".join(d.isoformat() for d in s.days) or "(nothing to settle)",
        s.values,
        s.written,
        s.by_source.get("estimate", 0),
        s.unsettled,
        s.seconds,
    )
