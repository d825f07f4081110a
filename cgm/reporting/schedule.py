"""The ASIC report inside the service: a daily job for D−1 and a job that follows answers.

``register_jobs(service)`` is the hook: it adds an on-start hook that schedules

* ``asic-daily`` at ``asic_report_time`` (Colombian time) every day: report yesterday and
  resend corrections inside the window (AsicReporter.run_daily);
* ``asic-monthly`` on ``asic_monthly_report_day`` at the same hour: report the previous
  month of the frontiers reported monthly (AsicReporter.run_monthly);
* ``asic-poll`` every ``asic_poll_interval_s``: ask the state of waiting messages and
  refresh the metrics (pending, time left to the deadline).

Several service instances may run against one database: each job runs only while holding a
PostgreSQL advisory lock, so one instance reports and the others skip that run. Without
``asic_base_url`` nothing is scheduled (and a log line says so).
"""

from __future__ import annotations

import logging

import psycopg

from cgm.reporting.asic.delivery import AsicReporter, transport_from_settings
from cgm.service import Service

log = logging.getLogger(__name__)

LOCK_KEY = 0x636D61736963  # "cmasic": one ASIC reporter at a time across instances


class AsicJobs:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.reporter: AsicReporter | None = None

    async def start(self, service: Service) -> None:
        s = service.settings
        if not s.asic_base_url:
            log.info("ASIC reporting not scheduled: CGM_ASIC_BASE_URL is not set")
            return
        self.reporter = AsicReporter(service.db_url, s, transport_from_settings(s))
        # a CGM down at report time reports when back
        service.add_local_job(self.daily, "asic-daily", s.asic_report_time, grace_s=6 * 3600)
        service.add_every(self.poll, "asic-poll", s.asic_poll_interval_s)
        service.add_local_job(
            self.monthly, "asic-monthly", s.asic_report_time,
            day=s.asic_monthly_report_day, grace_s=24 * 3600,
        )  # fmt: skip
        log.info("ASIC report scheduled daily at %s (Colombia), frontiers reported monthly "
                 "on day %d", s.asic_report_time, s.asic_monthly_report_day)  # fmt: skip

    async def stop(self, service: Service) -> None:
        if self.reporter is not None and self.reporter.transport is not None:
            await self.reporter.transport.aclose()

    async def _locked(self, what: str, job) -> None:  # noqa: ANN001 - a coroutine function
        try:
            async with await psycopg.AsyncConnection.connect(
                self.service.db_url, autocommit=True
            ) as conn:
                cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,))
                if not (await cur.fetchone())[0]:  # type: ignore[index]
                    log.debug("ASIC %s: another instance holds the lock", what)
                    return
                try:
                    await job()
                finally:
                    await conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
        except psycopg.Error as exc:
            log.error("ASIC %s failed (database): %s", what, exc)
        except Exception:  # noqa: BLE001 - a failed run must not kill the scheduler
            log.exception("ASIC %s failed", what)

    async def daily(self) -> None:
        assert self.reporter is not None
        await self._locked("daily report", self.reporter.run_daily)

    async def monthly(self) -> None:
        assert self.reporter is not None
        await self._locked("monthly report", self.reporter.run_monthly)

    async def poll(self) -> None:
        assert self.reporter is not None
        await self._locked("poll", self.reporter.poll)


def register_jobs(service: Service) -> AsicJobs:
    """Install the ASIC jobs on ``service`` (call before ``service.run()``)."""
    jobs = AsicJobs(service)
    service.on_start.append(jobs.start)
    service.on_stop.append(jobs.stop)
    return jobs
