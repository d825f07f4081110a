"""The portal push inside ``cgm run``: validated daily consumption goes out by itself.

``register_jobs(service)`` adds an on-start hook that schedules ``portal-push`` every day at
``portal_push_time`` (Colombian time), and also every ``portal_push_interval_s`` seconds when
that is positive. Each run pushes the last ``portal_push_days`` local days up to yesterday:
a day not yet complete is pushed once it is, a day whose settled values changed goes again
as a new version (``cgm.portal.push``), and a day already delivered unchanged costs one read.
Without ``portal_push_url`` nothing is scheduled, and a log line says so.

Several instances may share a database: a run holds a PostgreSQL advisory lock, so one
instance pushes and the others skip that run (idempotency keys make a race harmless anyway).
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta

import httpx
import psycopg

from cgm.localtime import local_day
from cgm.portal.push import PushSummary, push_day
from cgm.service import Service

log = logging.getLogger(__name__)

LOCK_KEY = 0x636D706F7274  # "cmport": one portal pusher at a time across instances


def days_to_push(today: date, days: int) -> list[date]:
    """The ``days`` local days before ``today``, oldest first."""
    return [today - timedelta(days=n) for n in range(days, 0, -1)]


class PortalPushJob:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.transport: httpx.AsyncBaseTransport | None = None  # tests: none (real HTTP)
        self.runs: list[list[PushSummary]] = []  # the last runs' summaries, newest last

    async def start(self, service: Service) -> None:
        s = service.settings
        if not s.portal_push_url:
            log.info("portal push not scheduled: CGM_PORTAL_PUSH_URL is not set")
            return
        # a CGM down at push time pushes when back
        service.add_local_job(self.run, "portal-push", s.portal_push_time, grace_s=6 * 3600)
        if s.portal_push_interval_s > 0:
            service.add_every(self.run, "portal-push-interval", s.portal_push_interval_s)
        log.info(
            "portal push scheduled daily at %s (Colombia)%s to %s",
            s.portal_push_time,
            f" and every {s.portal_push_interval_s:g} s" if s.portal_push_interval_s else "",
            s.portal_push_url,
        )

    async def run(self, today: date | None = None) -> list[PushSummary]:
        """Push the recent days once (the job's body; callable directly)."""
        s = self.service.settings
        assert s.portal_push_url
        token = s.portal_push_token.get_secret_value() if s.portal_push_token else None
        today = today or local_day(datetime.now(UTC))
        out: list[PushSummary] = []
        try:
            async with await psycopg.AsyncConnection.connect(self.service.db_url) as conn:
                cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,))
                if not (await cur.fetchone())[0]:  # type: ignore[index]
                    log.debug("portal push: another instance holds the lock")
                    return out
                await conn.commit()
                try:
                    for day in days_to_push(today, s.portal_push_days):
                        summary = await push_day(
                            conn, s.portal_push_url, day,
                            attempts=s.portal_push_attempts,
                            timeout_s=s.portal_push_timeout_s, token=token,
                            transport=self.transport,
                        )  # fmt: skip
                        out.append(summary)
                        _log(summary)
                finally:
                    await conn.rollback()
                    await conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
                    await conn.commit()
        except psycopg.Error as exc:
            log.error("portal push failed (database): %s", exc)
        except Exception:  # noqa: BLE001 - a failed run must not kill the scheduler
            log.exception("portal push failed")
        self.runs = [*self.runs[-9:], out]
        return out


def _log(s: PushSummary) -> None:
    if not (s.built or s.delivered or s.failed or s.rejected):
        return  # nothing new for that day: stay quiet
    level = logging.WARNING if s.failed or s.rejected else logging.INFO
    log.log(
        level,
        "portal push %s: %d delivered, %d unchanged, failed %s, rejected %s, incomplete %d",
        s.day, s.delivered, s.unchanged, s.failed or "none", s.rejected or "none",
        len(s.incomplete),
    )  # fmt: skip


def register_jobs(service: Service) -> PortalPushJob:
    """Install the portal push job on ``service`` (call before ``service.run()``)."""
    job = PortalPushJob(service)
    service.on_start.append(job.start)
    return job
