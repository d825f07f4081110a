"""Settled hourly series per frontier: the same idempotent, versioned write as readings.

Volumes are small (a frontier has 24 × 4 values a day), so rows go through psycopg's COPY
into a staging table and one upsert; no direct path.

The manual rule, which VEE relies on: a stored value whose source is ``manual`` is only
superseded by another ``manual`` write. Automatic writes (principal, backup, estimate) over
it are not applied and are counted as ``kept_manual``. A manual write must name an actor and
a reason, which the audit log keeps with the old image.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from cgm.storage.common import (
    CHANNELS_BY_ID,
    HOUR,
    InvalidRows,
    UnknownKeys,
    WriteResult,
    channel_id,
    missing_ids,
    set_audit_context,
    to_utc_us,
)
from cgm.storage.quality import KNOWN_MASK
from drivers.base import Channel

SOURCES = ("principal", "backup", "estimate", "manual")
_STAGE = "cgm_settled_stage"
_COLS = "frontier_id, channel, interval_start, value, source, method, flags, detail"


@dataclass(frozen=True, slots=True)
class SettledValue:
    """One settled hourly value in primary units. ``method`` names the estimation method
    and is required exactly when ``source`` is ``estimate``."""

    frontier_id: int
    channel: int | str | Channel
    interval_start: datetime
    value: float
    source: str
    method: str | None = None
    flags: int = 0
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredSettled:
    """A current settled value as read back."""

    frontier_id: int
    channel: int
    interval_start: datetime
    value: float
    source: str
    method: str | None
    flags: int
    detail: dict[str, Any]
    version: int
    settled_at: datetime
    actor: str
    reason: str | None


def _check(rows: list[SettledValue], interval: timedelta) -> list[tuple]:
    """Validated rows as tuples in key order, identical duplicates collapsed."""
    problems: list[str] = []
    out: dict[tuple, tuple] = {}
    step = interval / timedelta(microseconds=1)
    for i, r in enumerate(rows):
        try:
            if not isinstance(r, SettledValue):
                raise ValueError("not a SettledValue")
            if isinstance(r.frontier_id, bool) or not isinstance(r.frontier_id, int):
                raise ValueError(f"frontier_id {r.frontier_id!r} is not an integer")
            if r.frontier_id < 1:
                raise ValueError(f"frontier_id {r.frontier_id} must be >= 1")
            ch = channel_id(r.channel)
            t = to_utc_us(r.interval_start, "interval_start")
            if t.astype("i8") % step:
                raise ValueError(f"interval_start {t} not on a {interval} boundary")
            v = float(r.value)
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"value {r.value!r} is not a finite non-negative number")
            if r.source not in SOURCES:
                raise ValueError(f"source {r.source!r} not one of {SOURCES}")
            if (r.source == "estimate") != (r.method is not None):
                raise ValueError("method is required for, and only for, source 'estimate'")
            if r.flags < 0 or r.flags & ~KNOWN_MASK:
                raise ValueError(f"flags {r.flags:#x} has undefined bits")
        except (ValueError, TypeError) as exc:
            problems.append(f"row {i}: {exc}")
            continue
        key = (r.frontier_id, ch, r.interval_start)
        row = (r.frontier_id, ch, r.interval_start, v, r.source, r.method, r.flags, r.detail)
        if key in out and out[key][3:] != row[3:]:
            problems.append(
                f"row {i}: same (frontier, channel, interval) as an earlier row "
                "with a different value"
            )
        out.setdefault(key, row)
    if problems:
        shown = problems[:5] + ([f"… {len(problems) - 5} more"] if len(problems) > 5 else [])
        raise InvalidRows(f"{len(rows)} settled values", shown)
    return [out[k] for k in sorted(out, key=lambda k: (k[0], k[1], to_utc_us(k[2], "")))]


async def write_settled(
    conn: psycopg.AsyncConnection,
    rows: Iterable[SettledValue],
    *,
    actor: str,
    reason: str | None = None,
    interval: timedelta = HOUR,
) -> WriteResult:
    """Store settled values idempotently in one transaction (see the module docstring).

    Equal values are left alone; a different value (or source, method, flags, detail)
    becomes version + 1 with the old image in the audit log, unless the stored value is
    manual and the new one is not. ``actor`` and ``reason`` are stored on the rows written
    and in the audit log. Raises :class:`InvalidRows` before writing anything.
    """
    items = list(rows)
    checked = _check(items, interval)
    if not actor:
        raise InvalidRows("settled values", ["actor is required"])
    if any(r[4] == "manual" for r in checked) and not reason:
        raise InvalidRows("settled values", ["a manual value needs a reason"])
    if not checked:
        return WriteResult(None, 0, 0, 0, 0)
    async with conn.transaction():
        unknown = await missing_ids(conn, "frontier", np.unique([r[0] for r in checked]))
        if unknown:
            raise UnknownKeys("settled values", [f"unknown frontier id(s) {unknown[:20]}"])
        cur = await conn.execute(
            """INSERT INTO ingest_batch (actor, source, received, inserted, unchanged,
                                         superseded, target)
               VALUES (%s, %s, %s, 0, 0, 0, 'settled_reading') RETURNING id""",
            (actor, ",".join(sorted({r[4] for r in checked})), len(items)),
        )
        (batch_id,) = await cur.fetchone()  # type: ignore[misc]
        await set_audit_context(
            conn, actor, f"ingest_batch {batch_id}" + (f": {reason}" if reason else "")
        )
        await conn.execute(
            f"""CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (
                    frontier_id bigint, channel smallint, interval_start timestamptz,
                    value double precision, source text, method text, flags integer,
                    detail jsonb)"""
        )
        await conn.execute(f"TRUNCATE {_STAGE}")
        async with conn.cursor() as c, c.copy(f"COPY {_STAGE} ({_COLS}) FROM STDIN") as copy:
            for r in checked:
                await copy.write_row((*r[:7], Jsonb(dict(r[7]))))
        cur = await conn.execute(
            f"""WITH up AS (
                  INSERT INTO settled_reading AS t ({_COLS}, actor, reason)
                  SELECT {_COLS}, %(actor)s, %(reason)s FROM {_STAGE}
                  ORDER BY frontier_id, channel, interval_start
                  ON CONFLICT (frontier_id, channel, interval_start) DO UPDATE
                    SET value = excluded.value, source = excluded.source,
                        method = excluded.method, flags = excluded.flags,
                        detail = excluded.detail, actor = excluded.actor,
                        reason = excluded.reason, settled_at = now(),
                        version = t.version + 1
                    WHERE (t.source <> 'manual' OR excluded.source = 'manual')
                      AND (t.value, t.source, t.method, t.flags, t.detail)
                          IS DISTINCT FROM (excluded.value, excluded.source,
                                            excluded.method, excluded.flags, excluded.detail)
                  RETURNING t.version)
                SELECT count(*) FILTER (WHERE version = 1),
                       count(*) FILTER (WHERE version > 1) FROM up""",
            {"actor": actor, "reason": reason},
        )
        inserted, superseded = await cur.fetchone()  # type: ignore[misc]
        # After the upsert: stage rows that were refused because a manual value stands.
        cur = await conn.execute(
            f"""SELECT count(*) FROM {_STAGE} s JOIN settled_reading t
                  USING (frontier_id, channel, interval_start)
                WHERE t.source = 'manual' AND s.source <> 'manual'"""
        )
        (kept,) = await cur.fetchone()  # type: ignore[misc]
        await conn.execute(f"TRUNCATE {_STAGE}")
        unchanged = len(checked) - inserted - superseded - kept
        await conn.execute(
            """UPDATE ingest_batch SET inserted = %s, unchanged = %s, superseded = %s,
                                      kept_manual = %s WHERE id = %s""",
            (inserted, unchanged, superseded, kept, batch_id),
        )
    return WriteResult(batch_id, len(items), inserted, unchanged, superseded, kept_manual=kept)


async def read_settled(
    conn: psycopg.AsyncConnection,
    frontier_ids: Sequence[int],
    start: datetime,
    end: datetime,
    *,
    channels: Sequence[int | str | Channel] | None = None,
) -> list[StoredSettled]:
    """Current settled values with interval_start in [start, end), in key order."""
    to_utc_us(start, "start"), to_utc_us(end, "end")  # refuse naive bounds
    chans = sorted({channel_id(c) for c in channels}) if channels else sorted(CHANNELS_BY_ID)
    cur = await conn.execute(
        """SELECT frontier_id, channel, interval_start, value, source, method, flags, detail,
                  version, settled_at, actor, reason
           FROM settled_reading
           WHERE frontier_id = ANY(%s) AND channel = ANY(%s)
             AND interval_start >= %s AND interval_start < %s
           ORDER BY frontier_id, channel, interval_start""",
        (list(frontier_ids), chans, start, end),
    )
    return [StoredSettled(*r) for r in await cur.fetchall()]
