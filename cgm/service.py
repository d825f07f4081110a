"""The long-running CGM: storage, broker, metrics and the scheduler that drives the flow.

Stages add their jobs through :class:`Service.scheduler`; the service owns only lifecycle:
bring the database up to date, start embedded services where none are configured, serve
metrics, run the scheduler until SIGINT/SIGTERM, and stop cleanly.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import start_http_server

from cgm.config import Settings
from cgm.db import database_url
from cgm.migrate import upgrade

log = logging.getLogger(__name__)

Hook = Callable[["Service"], Awaitable[None]]


@dataclass
class Service:
    settings: Settings
    db_url: str = ""
    mqtt: tuple[str, int] | None = None
    scheduler: AsyncIOScheduler = field(default_factory=lambda: AsyncIOScheduler(timezone="UTC"))
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    on_start: list[Hook] = field(default_factory=list)
    on_stop: list[Hook] = field(default_factory=list)

    async def run(self) -> None:
        self.db_url = database_url(self.settings)
        result = await asyncio.to_thread(upgrade, self.db_url, self.settings)
        log.info(
            "schema up to date (applied %d migrations; timescaledb %s)",
            len(result.applied),
            "enabled" if result.timescale else "not available",
        )
        if self.settings.metrics_port:
            start_http_server(self.settings.metrics_port, addr=self.settings.api_host)
            log.info(
                "metrics on http://%s:%d/metrics",
                self.settings.api_host,
                self.settings.metrics_port,
            )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop_event.set)
        try:
            for hook in self.on_start:
                await hook(self)
            self.scheduler.start()
            log.info("cgm running; stop with Ctrl-C")
            await self.stop_event.wait()
        finally:
            if self.scheduler.running:
                self.scheduler.shutdown(wait=False)
            for hook in reversed(self.on_stop):
                await hook(self)
            log.info("cgm stopped")
