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
from typing import Any
from urllib.parse import urlsplit

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client import start_http_server

from cgm.config import PortTaken, Settings
from cgm.db import database_url
from cgm.localtime import COLOMBIA, parse_hhmm
from cgm.migrate import upgrade
from drivers import close_shared

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
    _broker: Any = None

    def add_local_job(
        self, func: Callable[[], Awaitable[Any]], job_id: str, at: str, *,
        grace_s: float, day: int | None = None,
    ) -> None:
        """Run ``func`` daily (monthly on ``day``) at ``at`` (HH:MM, Colombian time), one run
        at a time; a CGM that was down at that time runs it within ``grace_s`` of coming back."""
        t = parse_hhmm(at)
        self.scheduler.add_job(
            func, CronTrigger(day=day, hour=t.hour, minute=t.minute, timezone=COLOMBIA),
            id=job_id, max_instances=1, coalesce=True, misfire_grace_time=grace_s,
        )  # fmt: skip

    def add_every(self, func: Callable[[], Awaitable[Any]], job_id: str, seconds: float) -> None:
        """Run ``func`` every ``seconds``, one run at a time, missed runs merged into one."""
        self.scheduler.add_job(
            func, IntervalTrigger(seconds=seconds), id=job_id, max_instances=1, coalesce=True
        )

    async def run(self) -> None:
        self.db_url = database_url(self.settings)
        result = await asyncio.to_thread(upgrade, self.db_url, self.settings)
        log.info(
            "schema up to date (applied %d migrations; timescaledb %s)",
            len(result.applied),
            "enabled" if result.timescale else "not available",
        )
        if self.settings.metrics_port:
            try:
                start_http_server(self.settings.metrics_port, addr=self.settings.api_host)
            except OSError as exc:
                raise PortTaken(
                    f"metrics cannot listen on {self.settings.api_host}:"
                    f"{self.settings.metrics_port} ({exc.strerror or exc}); "
                    "set CGM_METRICS_PORT (0 disables metrics)"
                ) from None
            log.info(
                "metrics on http://%s:%d/metrics",
                self.settings.api_host,
                self.settings.metrics_port,
            )
        await self._start_broker()
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
            await close_shared()
            if self._broker is not None:
                await self._broker.stop()
            log.info("cgm stopped")

    async def _start_broker(self) -> None:
        """The configured broker, or an in-process MQTT 5 broker on ``mqtt_listen``."""
        if self.settings.mqtt_url:
            self.mqtt = mqtt_address(self.settings.mqtt_url)
            return
        from cgm.embedded.broker import Broker

        host, _, port = self.settings.mqtt_listen.rpartition(":")
        try:
            self._broker = Broker(host or "127.0.0.1", int(port))
            self.mqtt = await self._broker.start()
            log.info("in-process MQTT 5 broker on %s:%d", *self.mqtt)
        except OSError as exc:
            # Usually a broker (e.g. a local Mosquitto) already listens there: use it.
            self._broker = None
            self.mqtt = (host or "127.0.0.1", int(port))
            log.warning(
                "%s is taken (%s): using the MQTT broker already listening there; "
                "set CGM_MQTT_URL to choose another",
                self.settings.mqtt_listen,
                exc.strerror or exc,
            )


def mqtt_address(url: str) -> tuple[str, int]:
    """``mqtt://host:port`` → (host, port)."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in ("mqtt", "tcp"):
        raise ValueError(f"unsupported MQTT URL scheme {parts.scheme!r} (use mqtt://host:port)")
    return parts.hostname or "127.0.0.1", parts.port or 1883
