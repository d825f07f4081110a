"""Scheduling collection inside the service: hourly, shortly after the hour.

Meters register at the first minute of each hour (art. 15), so the cycle starts at minute
``minute`` with jitter to spread several collectors. ``max_instances=1`` and ``coalesce``
mean a slow cycle is never overlapped by the next and missed runs collapse into one; a cycle
also runs at start, so an outage of the CGM is caught up from meter memory immediately.

Every collector runs cycles (claims make each meter exactly-once per cycle); only the leader
(advisory lock, see claims.try_lead) runs fleet-wide singleton work such as the overdue count.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TextIO

import psycopg
from apscheduler.triggers.cron import CronTrigger

from cgm import metrics
from cgm.collection import claims
from cgm.collection.engine import Collector, CycleSummary, EngineConfig, clock_options
from cgm.progress import Progress
from cgm.security import secret_box
from cgm.service import Service

log = logging.getLogger(__name__)

AfterCycle = Callable[[CycleSummary], Awaitable[None]]


class CollectionJob:
    def __init__(self, service: Service, config: EngineConfig | None = None) -> None:
        self.service = service
        settings = service.settings
        self.config = config or EngineConfig(
            stale_after=timedelta(seconds=settings.collect_stale_after_s),
            max_wrong_passwords=settings.collect_max_wrong_passwords_per_day,
            **clock_options(settings),
        )
        self.collector: Collector | None = None
        self.after_cycle: list[AfterCycle] = []
        self._leader_conn: psycopg.AsyncConnection | None = None
        self.last: CycleSummary | None = None
        self._held = False
        # The first cycle catches up what the meters kept while cgm was away (up to their
        # whole memory): its progress is shown when this is a terminal.
        self.progress_stream: TextIO = sys.stdout
        self._first = True

    async def start(self, service: Service) -> None:
        self.collector = Collector(service.db_url, secret_box(service.settings), self.config)
        service.scheduler.add_job(
            self.run,
            CronTrigger(minute=2, jitter=20, timezone=UTC),
            id="collect",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=1800,
            next_run_time=datetime.now(UTC),  # catch up at once after a restart
        )

    async def stop(self, service: Service) -> None:
        if self._leader_conn is not None:
            await self._leader_conn.close()

    async def is_leader(self) -> bool:
        """Hold (or try to take) leadership; it passes on when the leader's connection dies."""
        try:
            if self._leader_conn is None or self._leader_conn.closed:
                self._leader_conn = await psycopg.AsyncConnection.connect(self.service.db_url)
                self._held = False
            if self._held:
                await self._leader_conn.execute("SELECT 1")  # alive, so the lock is still ours
                await self._leader_conn.commit()
            else:
                self._held = await claims.try_lead(self._leader_conn)
        except psycopg.Error:
            self._leader_conn, self._held = None, False
        return self._held

    async def run(self) -> None:
        assert self.collector is not None
        first, self._first = self._first, False
        shown = None
        if first and getattr(self.progress_stream, "isatty", lambda: False)():
            shown = asyncio.create_task(self._show_progress(self.collector))
        try:
            # run_cycle reports failures in the summary rather than raising: the later
            # stages always run for what was stored, even when the cycle ended early.
            summary = await self.collector.run_cycle()
        finally:
            if shown is not None:
                shown.cancel()
                await asyncio.gather(shown, return_exceptions=True)
        self.last = summary
        log.info(
            "cycle %s: %d meters, %d ok, %d failed, %d readings stored, %d refused, "
            "%d clocks corrected in %.1f s%s",
            summary.cycle.isoformat(),
            summary.meters,
            summary.ok,
            sum(summary.failed.values()),
            summary.intervals_stored,
            summary.intervals_refused,
            summary.clocks_corrected,
            summary.seconds,
            f"; errors: {'; '.join(summary.errors)}" if summary.errors else "",
        )
        try:
            if await self.is_leader():
                await self._overdue()
        except psycopg.Error as exc:
            log.warning("overdue count skipped: %s", exc)
        for hook in self.after_cycle:
            try:
                await hook(summary)
            except Exception:  # noqa: BLE001 - a later stage failing must not stop collection
                log.exception("after-cycle hook failed")

    async def _show_progress(self, collector: Collector, every: float = 0.5) -> None:
        """Meters done and intervals stored by the running cycle, until it is cancelled."""
        bar: Progress | None = None

        def draw() -> None:
            nonlocal bar
            s = collector.current
            if s is None or not s.meters:
                return
            if bar is None:
                bar = Progress("first catch-up, meters", s.meters, stream=self.progress_stream,
                               interval_s=0)  # fmt: skip
            bar.update(s.ok + sum(s.failed.values()), f"{s.intervals_stored} intervals stored")

        try:
            while True:
                await asyncio.sleep(every)
                draw()
        finally:
            draw()
            if bar is not None:
                bar.close()

    async def _overdue(self) -> None:
        async with await psycopg.AsyncConnection.connect(self.service.db_url) as conn:
            cur = await conn.execute(
                """SELECT count(*) FROM meter m LEFT JOIN meter_health h ON h.meter_id = m.id
                   WHERE m.active AND (h.last_success IS NULL
                                       OR h.last_success < now() - interval '2 hours')"""
            )
            row = await cur.fetchone()
        metrics.METERS_OVERDUE.set(row[0] if row else 0)


def install(service: Service, config: EngineConfig | None = None) -> CollectionJob:
    job = CollectionJob(service, config)
    service.on_start.append(job.start)
    service.on_stop.append(job.stop)
    return job
