"""Pushing validated daily consumption to the consumption portal.

* A day is pushed only when all its hours are settled: the portal receives validated days,
  never a partial one, and every estimated hour is marked with its method.
* A push is identified by the SHA-256 of its content; the same content is never pushed
  twice once delivered. A day whose settled values changed becomes a new version with a new
  idempotency key; an older undelivered version is marked ``superseded``.
* Each HTTP attempt (tenacity retries transport errors, 429 and 5xx with backoff) lands in
  ``portal_push_exchange`` with the portal's status and answer; 4xx other than 429 is a
  rejection, kept and not retried. An undelivered push goes with the next run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import httpx
import psycopg
from psycopg.types.json import Jsonb
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from cgm import metrics
from cgm.localtime import day_bounds, period_of
from cgm.storage import read_settled

log = logging.getLogger(__name__)
MAX_RESPONSE = 4000  # characters of the portal's answer kept per attempt


class _Retry(Exception):
    """A transient failure (transport error, 429, 5xx): try again."""


@dataclass
class PushSummary:
    day: date
    built: int = 0
    delivered: int = 0
    unchanged: int = 0
    incomplete: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


async def build_day(
    conn: psycopg.AsyncConnection, meter: str, frontier_id: int, channel: int, day: date
) -> dict[str, Any] | None:
    """The day's document, or None while any of its hours is not settled."""
    start, end = day_bounds(day)
    rows = await read_settled(conn, [frontier_id], start, end, channels=[channel])
    expected = int((end - start).total_seconds() // 3600)
    if len(rows) < expected:
        return None
    hours = [
        {
            "hour_period": period_of(r.interval_start)[1],
            "interval_start": r.interval_start.isoformat(),
            "value_kwh": r.value,
            "source": r.source,
            "method": r.method,
            "estimated": r.source == "estimate",
        }
        for r in rows
    ]
    est = [h for h in hours if h["estimated"]]
    return {
        "meter": meter,
        "day": day.isoformat(),
        "hours": hours,
        "total_kwh": sum(h["value_kwh"] for h in hours),
        "estimated_hours": len(est),
        "estimated_kwh": sum(h["value_kwh"] for h in est),
    }


async def _meters(conn: psycopg.AsyncConnection, meter: str | None) -> list[tuple]:
    cur = await conn.execute(
        """SELECT id, number, frontier_id, channel FROM portal_meter
           WHERE frontier_id IS NOT NULL AND (%(m)s::text IS NULL OR number = %(m)s)
           ORDER BY number""",
        {"m": meter},
    )
    return await cur.fetchall()


async def _stage(
    conn: psycopg.AsyncConnection, meter_id: int, number: str, day: date, doc: dict[str, Any]
) -> tuple[int, str, dict[str, Any], str] | None:
    """The push to send for this content (a new version if it changed), or None when this
    exact content was delivered already."""
    digest = hashlib.sha256(_canonical(doc)).hexdigest()
    async with conn.transaction():
        cur = await conn.execute(
            """SELECT id, version, content_hash, state, idempotency_key, content
               FROM portal_push WHERE meter_id = %s AND day = %s
               ORDER BY version DESC LIMIT 1 FOR UPDATE""",
            (meter_id, day),
        )
        last = await cur.fetchone()
        if last is not None and last[2] == digest:
            if last[3] == "delivered":
                return None
            return last[0], last[4], last[5], last[3]
        version = (last[1] + 1) if last else 1
        await conn.execute(
            """UPDATE portal_push SET state = 'superseded'
               WHERE meter_id = %s AND day = %s AND state = 'pending'""",
            (meter_id, day),
        )
        content = {**doc, "version": version, "correction": version > 1}
        key = f"{number}:{day.isoformat()}:v{version}:{digest[:16]}"
        cur = await conn.execute(
            """INSERT INTO portal_push (meter_id, day, version, content, content_hash,
                                        idempotency_key) VALUES (%s, %s, %s, %s, %s, %s)
               RETURNING id""",
            (meter_id, day, version, Jsonb(content), digest, key),
        )
        (push_id,) = await cur.fetchone()  # type: ignore[misc]
    return push_id, key, content, "pending"


async def _deliver(
    conn: psycopg.AsyncConnection,
    http: httpx.AsyncClient,
    url: str,
    push_id: int,
    key: str,
    content: dict[str, Any],
    *,
    attempts: int,
    token: str | None,
) -> str:
    headers = {"Idempotency-Key": key, "Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = _canonical(content)

    async def once() -> httpx.Response:
        t0 = time.perf_counter()
        status = text = error = None
        try:
            resp = await http.post(url, content=body, headers=headers)
            status, text = resp.status_code, resp.text[:MAX_RESPONSE]
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:MAX_RESPONSE]
        await conn.execute(
            """INSERT INTO portal_push_exchange (push_id, url, http_status, response, error,
                                                 seconds) VALUES (%s, %s, %s, %s, %s, %s)""",
            (push_id, url, status, text, error, time.perf_counter() - t0),
        )
        await conn.execute(
            "UPDATE portal_push SET attempts = attempts + 1 WHERE id = %s", (push_id,)
        )
        await conn.commit()
        if error is not None or status == 429 or (status or 0) >= 500:
            metrics.PORTAL_PUSH_FAILURES.labels("transient").inc()
            raise _Retry(error or f"HTTP {status}")
        return resp

    try:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(attempts),
            wait=wait_exponential(multiplier=0.2, max=5),
            retry=retry_if_exception_type(_Retry),
            reraise=True,
        ):
            with attempt:
                resp = await once()
    except _Retry as exc:
        log.warning("portal push %s not delivered after %d attempts: %s", key, attempts, exc)
        return "pending"
    state = "delivered" if resp.is_success else "rejected"
    if state == "rejected":
        metrics.PORTAL_PUSH_FAILURES.labels("rejected").inc()
    await conn.execute(
        """UPDATE portal_push SET state = %s,
               delivered_at = CASE WHEN %s = 'delivered' THEN now() END WHERE id = %s""",
        (state, state, push_id),
    )
    await conn.commit()
    return state


async def push_day(
    conn: psycopg.AsyncConnection,
    url: str,
    day: date,
    *,
    meter: str | None = None,
    attempts: int = 5,
    timeout_s: float = 10.0,
    token: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> PushSummary:
    """Push ``day`` of every linked portal meter (or one): new or changed days, and days
    built earlier and not yet delivered."""
    summary = PushSummary(day)
    async with httpx.AsyncClient(timeout=timeout_s, transport=transport) as http:
        for meter_id, number, frontier_id, channel in await _meters(conn, meter):
            doc = await build_day(conn, number, frontier_id, channel, day)
            await conn.commit()
            if doc is None:
                summary.incomplete.append(number)
                continue
            staged = await _stage(conn, meter_id, number, day, doc)
            if staged is None:
                summary.unchanged += 1
                continue
            push_id, key, content, state = staged
            summary.built += state == "pending"
            result = await _deliver(
                conn, http, url, push_id, key, content, attempts=attempts, token=token
            )
            metrics.PORTAL_PUSHES.labels(result).inc()
            if result == "delivered":
                summary.delivered += 1
                _, end = day_bounds(day)
                metrics.PORTAL_PUSH_LAG.set((datetime.now(UTC) - end).total_seconds())
            elif result == "rejected":
                summary.rejected.append(number)
            else:
                summary.failed.append(number)
    return summary


async def delivery_log(
    conn: psycopg.AsyncConnection, day: date, meter: str | None = None
) -> list[dict[str, Any]]:
    """What was pushed for ``day`` and what the portal answered, newest version first."""
    cur = await conn.execute(
        """SELECT m.number, p.version, p.state, p.idempotency_key, p.attempts, p.created_at,
                  p.delivered_at, x.http_status, x.response, x.error
           FROM portal_push p JOIN portal_meter m ON m.id = p.meter_id
           LEFT JOIN LATERAL (SELECT http_status, response, error FROM portal_push_exchange
                              WHERE push_id = p.id ORDER BY at DESC, id DESC LIMIT 1) x ON true
           WHERE p.day = %s AND (%s::text IS NULL OR m.number = %s)
           ORDER BY m.number, p.version DESC""",
        (day, meter, meter),
    )
    keys = ("meter", "version", "state", "idempotency_key", "attempts", "created_at",
            "delivered_at", "last_status", "last_response", "last_error")  # fmt: skip
    return [dict(zip(keys, r, strict=True)) for r in await cur.fetchall()]
