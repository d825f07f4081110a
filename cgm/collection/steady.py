"""Which MQTT meters the hourly cycle may skip because their pushes keep them current.

See :mod:`cgm.collection.push`. Apart from it so that the engine can ask without importing
the consumer (which builds on the engine's storing functions).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import psycopg

from cgm.registry import MeterConfig

HOUR = timedelta(hours=1)
FULL_SESSION_HOURS = 24.0  # default of params.full_session_hours


def pushes(target: MeterConfig) -> bool:
    """An MQTT meter whose pushes are consumed (``params.push`` not false)."""
    return target.protocol == "mqtt" and target.params.get("push", True) is not False


async def pushed_recently(
    conn: psycopg.AsyncConnection, targets: Sequence[MeterConfig], now: datetime | None = None
) -> set[int]:
    """MQTT meters the hourly cycle may skip: their previous hour arrived by push after their
    last full session, and that session is younger than ``params.full_session_hours``."""
    candidates = {t.meter_id: t for t in targets if pushes(t)}
    if not candidates:
        return set()
    now = now or datetime.now(UTC)
    previous = now.replace(minute=0, second=0, microsecond=0) - HOUR
    cur = await conn.execute(
        """SELECT m.id,
                  (SELECT max(r.collected_at) FROM reading r WHERE r.meter_id = m.id
                     AND r.interval_start >= %(previous)s),
                  (SELECT s.finished_at FROM collection_session s WHERE s.meter_id = m.id
                     AND s.result = 'ok' ORDER BY s.started_at DESC LIMIT 1)
           FROM unnest(%(ids)s::bigint[]) AS m(id)""",
        {"ids": list(candidates), "previous": previous},
    )
    skip = set()
    for meter_id, pushed_at, last_full in await cur.fetchall():
        hours = float(candidates[meter_id].params.get("full_session_hours", FULL_SESSION_HOURS))
        if pushed_at is None or last_full is None:
            continue
        # Collected after the last full session ended: it came from a push, not from that
        # session (a session stamps what it read with its own end).
        if pushed_at > last_full and now - last_full < timedelta(hours=hours):
            skip.add(meter_id)
    return skip
