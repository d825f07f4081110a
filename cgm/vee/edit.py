"""Manual edits of settled values (level 2): a new version with who, when and why.

The service's user and access-level model does not exist yet: callers pass the
authenticated ``actor`` and their ``level``; the API/CLI layer will supply them from the
logged-in user. Level 1 reads only (art. 17), so anything below 2 is refused here, before
the database is touched. The edit is stored with ``source='manual'``, which automatic VEE
re-runs never overwrite; the previous value stays readable in ``settled_version``.
"""

from __future__ import annotations

from datetime import datetime

import psycopg
from psycopg.types.json import Jsonb

from cgm.frontier_log import MANUAL_EDIT
from cgm.localtime import HOUR, period_of
from cgm.storage import Quality, SettledValue, StoredSettled, read_settled, write_settled
from cgm.storage.common import CHANNELS_BY_ID, channel_id


class EditRefused(PermissionError):
    """The user may not edit settled values (level below 2), or the edit is malformed."""


async def edit_settled(
    conn: psycopg.AsyncConnection,
    *,
    frontier: str,
    channel: str | int,
    interval_start: datetime,
    value: float,
    reason: str,
    actor: str,
    level: int,
) -> StoredSettled:
    """Replace one settled hourly value by hand and return the stored new version."""
    if level < 2:
        raise EditRefused(
            f"{actor or 'unknown user'} has access level {level}; editing settled values "
            "needs level 2 (Código de Medida art. 17)"
        )
    if not actor or not reason or not reason.strip():
        raise EditRefused("an edit needs the actor and a reason")
    period_of(interval_start)  # on the hour, aware
    ch = channel_id(channel)
    cur = await conn.execute("SELECT id FROM frontier WHERE code = %s", (frontier,))
    row = await cur.fetchone()
    if row is None:
        raise LookupError(f"unknown frontier {frontier}")
    fid = int(row[0])
    end = interval_start + HOUR
    before = await read_settled(conn, [fid], interval_start, end, channels=[ch])
    previous = (
        {"value": before[0].value, "source": before[0].source, "version": before[0].version}
        if before
        else None
    )
    await write_settled(
        conn,
        [
            SettledValue(
                fid,
                ch,
                interval_start,
                value,
                "manual",
                None,
                int(Quality.MANUAL),
                {"previous": previous},
            )
        ],
        actor=actor,
        reason=reason,
    )
    await conn.execute(
        """INSERT INTO frontier_log (frontier_id, actor, kind, purpose, activities)
           VALUES (%s, %s, %s, %s, %s)""",
        (
            fid,
            actor,
            MANUAL_EDIT,
            reason,
            Jsonb(
                {
                    "channel": CHANNELS_BY_ID[ch].value,
                    "interval_start": interval_start.isoformat(),
                    "value": value,
                    "previous": previous,
                    "level": level,
                }
            ),
        ),
    )
    await conn.commit()
    (stored,) = await read_settled(conn, [fid], interval_start, end, channels=[ch])
    return stored
