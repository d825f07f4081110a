"""The frontier's hoja de vida (``frontier_log``): its kinds and the queries on them.

Collection writes level-2 accesses and findings here, validation reads clock corrections
back: both use these names, so the convention lives in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import psycopg

LEVEL2_ACCESS = "level2_access"
ALARM = "alarm"
CONFIG_VIOLATION = "config_violation"
MANUAL_EDIT = "manual_edit"
FAILURE = "failure"  # a failure or theft opened or closed (cgm/failures.py)
CLOCK_SYNC = "clock synchronisation"  # purpose of a level-2 clock correction


async def clock_corrections(
    conn: psycopg.AsyncConnection,
    meter_ids: Sequence[int],
    start: datetime,
    end: datetime | None = None,
) -> list[tuple[int, datetime, datetime]]:
    """(meter_id, from, when) of large clock corrections of these meters — a set made on a
    clock past its limit (art. 16) — whose span [when - |offset before|, when] meets
    [start, end): the meter stamped every interval in that span with the wrong time."""
    cur = await conn.execute(
        """SELECT meter_id, at - make_interval(secs => abs(off)), at
           FROM (SELECT meter_id, at,
                        coalesce((activities->>'offset_before_s')::float8, 0) AS off,
                        (activities->>'limit_s')::float8 AS lim,
                        activities ? 'set_to' AND activities->>'set_to' IS NULL AS unset
                 FROM frontier_log
                 WHERE kind = %s AND purpose = %s AND meter_id = ANY(%s) AND at >= %s) c
           WHERE NOT unset AND (lim IS NULL OR abs(off) > lim)
             AND (%s::timestamptz IS NULL OR at - make_interval(secs => abs(off)) < %s)""",
        (LEVEL2_ACCESS, CLOCK_SYNC, list(meter_ids), start, end, end),
    )
    return list(await cur.fetchall())
