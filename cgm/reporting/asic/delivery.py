"""Delivery of daily documents to the ASIC: build, deduplicate, zip, send, poll, record.

Rules this module keeps (README, "ASIC reporting"):

* a document is identified by the SHA-256 of its bytes; the settled version is part of the
  content, so "the same version" is "the same hash" and is never sent twice once the ASIC
  has accepted it for processing;
* a day sent before whose series changed is sent again as a ``correction``, while the day is
  inside the correction window; outside it the new version is stored as ``late``, not sent;
* a document whose upload failed in transport stays ``pending`` and goes with the next run;
  a newer version built meanwhile marks it ``superseded``;
* every request and response is stored (asic_exchange) with the hash of its payload;
* held frontiers are not built at all.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from cgm import metrics
from cgm.config import Settings
from cgm.frontier_log import LEVEL2_ACCESS
from cgm.localtime import COLOMBIA, local_day, parse_hhmm
from cgm.reporting import holds
from cgm.reporting.asic import xm_xml
from cgm.reporting.asic.format import DayBuild, Document, build_day, pack
from cgm.reporting.asic.monthly import MonthDocument, month_bounds, month_documents
from cgm.reporting.asic.transport import (
    FINAL,
    AsicTransport,
    Exchange,
    HttpTransport,
    Rejected,
    TokenRefused,
    TransportError,
    sha256,
)

log = logging.getLogger(__name__)

ACCEPTED = ("waiting", "success", "success_warning")  # the ASIC has (or is processing) it
_RESULT = {"success": "success", "success_warning": "success_warning", "error": "rejected"}


class NotConfigured(RuntimeError):
    """The ASIC's URL or credentials are missing from the configuration."""


def transport_from_settings(settings: Settings) -> HttpTransport:
    if not (settings.asic_base_url and settings.asic_client_id and settings.asic_client_secret):
        raise NotConfigured(
            "set CGM_ASIC_BASE_URL, CGM_ASIC_CLIENT_ID and CGM_ASIC_CLIENT_SECRET "
            "(or use --dry-run)"
        )
    return HttpTransport(
        settings.asic_base_url,
        settings.asic_client_id,
        settings.asic_client_secret.get_secret_value(),
        settings.cgm_code,
        timeout=settings.asic_timeout_s,
        attempts=settings.asic_retry_attempts,
    )


def deadline(settings: Settings, day: date) -> datetime:
    """When day ``day``'s readings are due at the ASIC (configured, with its source note)."""
    due = day + timedelta(days=settings.asic_deadline_days)
    return datetime.combine(due, parse_hhmm(settings.asic_deadline_time), COLOMBIA)


@dataclass
class DayResult:
    day: date
    build: DayBuild
    sent: list[str] = field(default_factory=list)  # files accepted for processing now
    unchanged: list[str] = field(default_factory=list)  # this version was already sent
    late: list[str] = field(default_factory=list)  # corrections outside the window
    failed: dict[str, str] = field(default_factory=dict)  # file → why (left pending)
    rejected: dict[str, str] = field(default_factory=dict)  # file → the ASIC's reason

    def as_dict(self) -> dict[str, Any]:
        return {
            "day": self.day.isoformat(),
            "documents": len(self.build.documents),
            "sent": self.sent,
            "unchanged": self.unchanged,
            "late": self.late,
            "failed": self.failed,
            "rejected": self.rejected,
            "not_ready": self.build.not_ready,
            "held": self.build.held,
            "backup_waiting": self.build.partial,
            "estimated": self.build.estimation_report(),
        }


@dataclass
class MonthResult:
    """What one monthly run did (the same lists as :class:`DayResult`)."""

    month: date
    documents: int
    sent: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    late: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    not_ready: dict[str, str] = field(default_factory=dict)
    held: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"month": f"{self.month:%Y-%m}", **{k: v for k, v in vars(self).items()
                                                   if k != "month"}}  # fmt: skip


class AsicReporter:
    """Reports days to the ASIC through ``transport``; one instance per job or command."""

    def __init__(
        self,
        db_url: str,
        settings: Settings,
        transport: AsicTransport | None,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.db_url = db_url
        self.settings = settings
        self.transport = transport
        self.now = now
        # Set when the ASIC refuses our token: the rest of the run is not attempted (each
        # attempt would be one more refused login); its documents stay pending too.
        self._token_refused: TokenRefused | None = None

    async def _connect(self) -> psycopg.AsyncConnection:
        return await psycopg.AsyncConnection.connect(self.db_url, autocommit=True)

    # --- building ------------------------------------------------------------------------
    async def build(self, day: date, frontiers: Sequence[str] | None = None) -> DayBuild:
        """The day's documents as they would be sent now; writes nothing."""
        async with await self._connect() as conn:
            held = {c: h.reason for c, h in (await holds.current(conn)).items()}
            return await build_day(
                conn, day, self.settings.cgm_code, frontiers=frontiers, held=held,
                fmt=self.settings.asic_format,
            )  # fmt: skip

    async def dry_run(
        self, day: date, out: Path, frontiers: Sequence[str] | None = None
    ) -> DayBuild:
        """Write the day's documents, zips and estimation report under ``out``."""
        build = await self.build(day, frontiers)
        zips = [
            (self._zip_name(day, i), p) for i, (p, _) in enumerate(self._pack(build.documents), 1)
        ]
        await asyncio.to_thread(write_dry_run, out, build, zips)
        return build

    # --- sending -------------------------------------------------------------------------
    async def report_day(self, day: date, frontiers: Sequence[str] | None = None) -> DayResult:
        """Send every document of ``day`` whose current version the ASIC does not have."""
        if self.transport is None:
            raise NotConfigured("no transport to the ASIC")
        build = await self.build(day, frontiers)
        result = DayResult(day, build)
        self._token_refused = None
        async with await self._connect() as conn:
            to_send = await self._register_all(conn, build.documents, result)
            by_name = {doc.file_name: doc_id for doc_id, doc in to_send}
            for i, (payload, docs) in enumerate(self._pack([d for _, d in to_send]), 1):
                ids = [by_name[d.file_name] for d in docs]
                await self._send_zip(conn, self._zip_name(day, i), payload, docs, ids, result)
        await self.update_metrics()
        return result

    async def _register_all(
        self, conn: psycopg.AsyncConnection, docs: Sequence[Document | MonthDocument],
        result: DayResult | MonthResult,
    ) -> list[tuple[int, Any]]:  # fmt: skip
        """Register each document (a daily or monthly one); those the ASIC must get, with their
        delivery ids. Unchanged and late ones are noted in ``result``."""
        to_send: list[tuple[int, Any]] = []
        for doc in docs:
            doc_id, action = await self._register(conn, doc)  # type: ignore[arg-type]
            if action == "send":
                to_send.append((doc_id, doc))
            elif action == "unchanged":
                result.unchanged.append(doc.file_name)
            else:
                result.late.append(doc.file_name)
                metrics.ASIC_DOCUMENTS.labels("late").inc()
        return to_send

    async def report_month(
        self, month: date, frontiers: Sequence[str] | None = None
    ) -> MonthResult:
        """Send the month's items of the frontiers reported monthly (registry
        ``asic_period: monthly``; XM's ``ReadingCount`` 1) that the ASIC does not have, in
        XM's XML message whatever ``asic_format`` says (the legacy zip has no monthly form).
        Daily frontiers are never in it, nor monthly ones in the daily report."""
        if self.transport is None:
            raise NotConfigured("no transport to the ASIC")
        first = month.replace(day=1)
        async with await self._connect() as conn:
            held = {c: h.reason for c, h in (await holds.current(conn)).items()}
            docs, why, held_out = await month_documents(conn, first, frontiers, held)
        result = MonthResult(first, len(docs), not_ready=why, held=held_out)
        self._token_refused = None
        async with await self._connect() as conn:
            to_send = await self._register_all(conn, docs, result)
            by_name = {doc.file_name: doc_id for doc_id, doc in to_send}
            packed = xm_xml.pack([(d.item, d) for _, d in to_send],
                                 max_items=self.settings.asic_max_items_per_message,
                                 max_bytes=self.settings.asic_max_zip_bytes)  # fmt: skip
            stamp = self.now().astimezone(COLOMBIA).strftime("%Y%m%d%H%M%S")
            for i, (payload, batch) in enumerate(packed, 1):
                ids = [by_name[d.file_name] for d in batch]  # type: ignore[attr-defined]
                name = f"{self.settings.cgm_code}_{first:%Y%m}_M_{stamp}_{i}.xml"
                await self._send_zip(conn, name, payload, batch, ids, result)  # type: ignore[arg-type]
        await self.update_metrics()
        return result

    async def run_monthly(self) -> MonthResult:
        """The monthly job: report the previous local month."""
        first = local_day(self.now()).replace(day=1)
        return await self.report_month((first - timedelta(days=1)).replace(day=1))

    async def mark_for_resend(
        self, day: date, frontiers: Sequence[str] | None, *, actor: str, reason: str
    ) -> list[str]:
        """Set the day's current documents back to pending so the next send uploads them
        again, whatever the ASIC answered before (an operator's decision: a level-2 user,
        who and why kept on each document and in each frontier's hoja de vida)."""
        async with await self._connect() as conn, conn.transaction():
            cur = await conn.execute(
                """UPDATE asic_document d
                   SET state = 'pending',
                       detail = d.detail || jsonb_build_object('resend', jsonb_build_object(
                           'actor', %(actor)s::text, 'reason', %(reason)s::text,
                           'at', now(), 'previous_state', d.state,
                           'previous_submission', d.submission_id))
                   FROM frontier f
                   WHERE f.id = d.frontier_id AND d.day = %(day)s
                     AND d.state IN ('waiting', 'success', 'success_warning', 'error')
                     AND (%(codes)s::text[] IS NULL OR f.code = ANY(%(codes)s))
                   RETURNING f.id, d.file_name""",
                {"actor": actor, "reason": reason, "day": day,
                 "codes": list(frontiers) if frontiers else None},
            )  # fmt: skip
            marked = await cur.fetchall()
            by_frontier: dict[int, list[str]] = {}
            for fid, name in marked:
                by_frontier.setdefault(fid, []).append(name)
            for fid, names in by_frontier.items():
                await conn.execute(
                    """INSERT INTO frontier_log (frontier_id, actor, kind, purpose, activities,
                                                 proof)
                       VALUES (%s, %s, %s, %s, %s, %s)""",
                    (
                        fid,
                        actor,
                        LEVEL2_ACCESS,
                        reason,
                        Jsonb({"activities": [f"ASIC re-send of {day}"], "documents": names}),
                        "documents set back to pending for the next upload",
                    ),
                )
        log.info("%s marked %d ASIC documents of %s for re-send", actor, len(marked), day)
        return sorted(name for _, name in marked)

    def _pack(self, docs: list[Document]) -> list[tuple[bytes, list[Document]]]:
        if self.settings.asic_format == "xm_xml":
            return xm_xml.pack(  # type: ignore[return-value]
                [(d.item, d) for d in docs],
                max_items=self.settings.asic_max_items_per_message,
                max_bytes=self.settings.asic_max_zip_bytes,
            )
        return pack(
            docs,
            max_documents=self.settings.asic_max_documents_per_zip,
            max_bytes=self.settings.asic_max_zip_bytes,
        )

    def _zip_name(self, day: date, n: int) -> str:
        stamp = self.now().astimezone(COLOMBIA).strftime("%Y%m%d%H%M%S")
        ext = "xml" if self.settings.asic_format == "xm_xml" else "zip"
        return f"{self.settings.cgm_code}_{day:%Y%m%d}_{stamp}_{n}.{ext}"

    def in_window(self, day: date, period: str = "day") -> bool:
        """A day (or a month, counted from its last day) still inside the correction window."""
        today = local_day(self.now())
        last = day if period == "day" else month_bounds(day)[1] - timedelta(days=1)
        return (today - last).days <= self.settings.asic_correction_window_days

    async def _register(self, conn: psycopg.AsyncConnection, doc: Document) -> tuple[int, str]:
        """Store the document unless this version is known; say whether to send it."""
        period = getattr(doc, "period", "day")  # MonthDocument: "month"
        cur = await conn.execute(
            "SELECT id, state, content_hash FROM asic_document "
            "WHERE meter_id = %s AND day = %s AND period = %s ORDER BY id",
            (doc.meter_id, doc.day, period),
        )
        rows = await cur.fetchall()
        for doc_id, state, h in rows:
            if h == doc.content_hash:
                return doc_id, ("send" if state == "pending" else "unchanged")
        kind = "correction" if any(s in ACCEPTED for _, s, _ in rows) else "original"
        late = kind == "correction" and not self.in_window(doc.day, period)
        state = "late" if late else "pending"
        async with conn.transaction():
            await conn.execute(
                "UPDATE asic_document SET state = 'superseded' "
                "WHERE meter_id = %s AND day = %s AND period = %s AND state = 'pending'",
                (doc.meter_id, doc.day, period),
            )
            cur = await conn.execute(
                """INSERT INTO asic_document
                     (frontier_id, meter_id, role, day, file_name, kind, content, content_hash,
                      settled_version, estimated, state, period)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
                (
                    doc.frontier_id,
                    doc.meter_id,
                    doc.role,
                    doc.day,
                    doc.file_name,
                    kind,
                    Jsonb(doc.content),
                    doc.content_hash,
                    doc.settled_version,
                    Jsonb(doc.estimated),
                    state,
                    period,
                ),
            )
            (doc_id,) = await cur.fetchone()  # type: ignore[misc]
        return doc_id, ("send" if state == "pending" else "late")

    async def _send_zip(
        self,
        conn: psycopg.AsyncConnection,
        zip_name: str,
        payload: bytes,
        docs: list[Document],
        ids: list[int],
        result: DayResult,
    ) -> None:
        assert self.transport is not None
        cur = await conn.execute(
            """INSERT INTO asic_submission (zip_name, payload_hash, size_bytes, documents,
                                            transport)
               VALUES (%s, %s, %s, %s, %s) RETURNING id""",
            (zip_name, sha256(payload), len(payload), len(docs), self.transport.name),
        )
        (sub_id,) = await cur.fetchone()  # type: ignore[misc]
        exchanges: list[Exchange] = []
        try:
            if self._token_refused is not None:
                raise self._token_refused
            message_id = await self.transport.upload(zip_name, payload, exchanges.append)
        except TransportError as exc:
            if isinstance(exc, TokenRefused):
                self._token_refused = exc
            await self._store_exchanges(conn, sub_id, exchanges)
            await conn.execute(
                "UPDATE asic_submission SET state = 'failed', detail = %s WHERE id = %s",
                (Jsonb({"error": str(exc)}), sub_id),
            )
            await conn.execute(
                "UPDATE asic_document SET submission_id = %s WHERE id = ANY(%s)", (sub_id, ids)
            )
            for d in docs:
                result.failed[d.file_name] = str(exc)
            metrics.ASIC_DOCUMENTS.labels("transport_failed").inc(len(docs))
            log.warning("ASIC upload of %s failed, documents stay pending: %s", zip_name, exc)
            return
        except Rejected as exc:
            await self._store_exchanges(conn, sub_id, exchanges)
            now = self.now()
            await conn.execute(
                "UPDATE asic_submission SET state = 'error', detail = %s, final_at = %s "
                "WHERE id = %s",
                (Jsonb({"error": str(exc)}), now, sub_id),
            )
            await conn.execute(
                """UPDATE asic_document SET state = 'error', submission_id = %s,
                                           detail = detail || %s,
                                           final_at = %s WHERE id = ANY(%s)""",
                (sub_id, Jsonb({"mensaje": exc.message}), now, ids),
            )
            for d in docs:
                result.rejected[d.file_name] = exc.message
            metrics.ASIC_DOCUMENTS.labels("rejected").inc(len(docs))
            log.error("ASIC refused %s: %s", zip_name, exc)
            return
        now = self.now()
        await self._store_exchanges(conn, sub_id, exchanges)
        await conn.execute(
            """UPDATE asic_submission SET state = 'waiting', message_id = %s, sent_at = %s
               WHERE id = %s""",
            (message_id, now, sub_id),
        )
        await conn.execute(
            """UPDATE asic_document SET state = 'waiting', submission_id = %s, sent_at = %s
               WHERE id = ANY(%s)""",
            (sub_id, now, ids),
        )
        result.sent.extend(d.file_name for d in docs)
        metrics.ASIC_DOCUMENTS.labels("sent").inc(len(docs))
        log.info("ASIC: %s sent (%d documents), message %s", zip_name, len(docs), message_id)

    async def _store_exchanges(
        self, conn: psycopg.AsyncConnection, sub_id: int | None, exchanges: list[Exchange]
    ) -> None:
        for e in exchanges:
            outcome = "error" if e.status_code is None else str(e.status_code)
            metrics.ASIC_REQUESTS.labels(e.operation, outcome).inc()
            await conn.execute(
                """INSERT INTO asic_exchange (submission_id, operation, method, url,
                       request_hash, status_code, response, response_hash, error, seconds)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
                (sub_id, e.operation, e.method, e.url, e.request_hash, e.status_code,
                 e.response, e.response_hash, e.error, e.seconds),
            )  # fmt: skip
        exchanges.clear()

    # --- following up --------------------------------------------------------------------
    async def poll(self, *, rounds: int = 1, interval_s: float = 0.0) -> int:
        """Ask the state of every message still waiting, up to ``rounds`` times; returns
        how many remain open."""
        if self.transport is None:
            raise NotConfigured("no transport to the ASIC")
        open_ = 0
        async with await self._connect() as conn:
            for r in range(rounds):
                cur = await conn.execute(
                    "SELECT id, message_id FROM asic_submission WHERE state = 'waiting' ORDER BY id"
                )
                waiting = await cur.fetchall()
                open_ = 0
                for sub_id, message_id in waiting:
                    open_ += 0 if await self._poll_one(conn, sub_id, message_id) else 1
                if not open_ or r == rounds - 1:
                    break
                await asyncio.sleep(interval_s)
        await self.update_metrics()
        return open_

    async def _poll_one(self, conn: psycopg.AsyncConnection, sub_id: int, message_id: str) -> bool:
        assert self.transport is not None
        exchanges: list[Exchange] = []
        try:
            status = await self.transport.status(message_id, exchanges.append)
        except (TransportError, Rejected) as exc:
            await self._store_exchanges(conn, sub_id, exchanges)
            log.warning("ASIC status of %s failed: %s", message_id, exc)
            return False
        await self._store_exchanges(conn, sub_id, exchanges)
        now = self.now()
        await conn.execute(
            "UPDATE asic_submission SET last_polled = %s WHERE id = %s", (now, sub_id)
        )
        if status.state not in FINAL:
            return False
        files = {f.name: f for f in status.files}
        async with conn.transaction():
            await conn.execute(
                """UPDATE asic_submission SET state = %s, final_at = %s, detail = %s
                   WHERE id = %s""",
                (
                    status.state,
                    now,
                    Jsonb(
                        {"mensaje": status.message, "detalles": [f.__dict__ for f in status.files]}
                    ),
                    sub_id,
                ),
            )
            cur = await conn.execute(
                "SELECT id, file_name FROM asic_document WHERE submission_id = %s "
                "AND state = 'waiting'",
                (sub_id,),
            )
            for doc_id, name in await cur.fetchall():
                f = files.get(name)
                state = f.state if f else status.state
                await conn.execute(
                    # Merged, so a re-send's record (who, why) stays beside the answer.
                    "UPDATE asic_document SET state = %s, final_at = %s, detail = detail || %s "
                    "WHERE id = %s",
                    (state, now, Jsonb({"mensaje": f.message if f else status.message}), doc_id),
                )
                metrics.ASIC_DOCUMENTS.labels(_RESULT[state]).inc()
        return True

    # --- the daily job -------------------------------------------------------------------
    async def run_daily(self) -> list[DayResult]:
        """Report yesterday, then resend any day in the correction window whose series
        changed (and catch up days never sent); oldest first."""
        today = local_day(self.now())
        window = self.settings.asic_correction_window_days
        days = [today - timedelta(days=n) for n in range(max(window, 1), 0, -1)]
        results = []
        for day in days:
            results.append(await self.report_day(day))
        return results

    async def update_metrics(self) -> None:
        now = self.now()
        yesterday = local_day(now) - timedelta(days=1)
        metrics.ASIC_DEADLINE_SECONDS.set(
            (deadline(self.settings, yesterday) - now).total_seconds()
        )
        async with await self._connect() as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM asic_document WHERE state IN ('pending', 'waiting')"
            )
            metrics.ASIC_PENDING.set((await cur.fetchone())[0])  # type: ignore[index]
            cur = await conn.execute(
                """SELECT count(*) FROM frontier f
                   WHERE EXISTS (SELECT 1 FROM meter m WHERE m.frontier_id = f.id AND m.active)
                     AND NOT EXISTS (SELECT 1 FROM asic_document d
                                     WHERE d.frontier_id = f.id AND d.day = %s
                                       AND d.role = 'principal'
                                       AND d.state IN ('success', 'success_warning'))""",
                (yesterday,),
            )
            metrics.ASIC_UNREPORTED.set((await cur.fetchone())[0])  # type: ignore[index]


def write_dry_run(out: Path, build: DayBuild, zips: list[tuple[str, bytes]]) -> None:
    """Documents, zips and the day's estimation report, as files for an operator to read."""
    out.mkdir(parents=True, exist_ok=True)
    for doc in build.documents:
        (out / f"{doc.file_name}.json" if doc.fmt == "xm_xml" else out / doc.file_name
         ).write_bytes(doc.body)  # fmt: skip
    for name, payload in zips:
        (out / name).write_bytes(payload)
    report = {
        "day": build.day.isoformat(),
        "estimated": build.estimation_report(),
        "not_ready": build.not_ready,
        "held": build.held,
        "backup_waiting": build.partial,
    }
    (out / f"estimacion_{build.day:%Y%m%d}.json").write_text(
        json.dumps(report, ensure_ascii=False, indent=2)
    )
