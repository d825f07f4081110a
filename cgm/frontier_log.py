"""The frontier's hoja de vida (``frontier_log``): its kinds and the queries on them.

Collection writes level-2 accesses and findings here, validation reads clock corrections
back: both use these names, so the convention lives in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from cgm.storage.pgbinary import int8_array

LEVEL2_ACCESS = "level2_access"
ALARM = "alarm"
CONFIG_VIOLATION = "config_violation"
MANUAL_EDIT = "manual_edit"
FAILURE = "failure"  # a failure or theft opened or closed (cgm/failures.py)
CLOCK_SYNC = "clock synchronisation"  # purpose of a level-2 clock correction
UNREADABLE_CREDENTIAL = "stored credential cannot be decrypted"  # purpose of its alarm


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
        (LEVEL2_ACCESS, CLOCK_SYNC, int8_array(meter_ids), start, end, end),
    )
    return list(await cur.fetchall())


async def alarm_once(
    conn: psycopg.AsyncConnection,
    alarms: Sequence[tuple[int, int, str, str, Any]],
    within: timedelta = timedelta(hours=24),
) -> int:
    """Raise alarms ``(frontier_id, meter_id, actor, purpose, activities)``, each unless the
    meter already has one of that purpose within ``within``: a fault that repeats every hour
    (or a flood of forged messages) is one hoja de vida entry a day, not one per event."""
    added = 0
    for frontier_id, meter_id, actor, purpose, activities in alarms:
        cur = await conn.execute(
            """INSERT INTO frontier_log (frontier_id, meter_id, actor, kind, purpose, activities)
               SELECT %(f)s, %(m)s, %(actor)s, %(kind)s, %(purpose)s, %(act)s
               WHERE NOT EXISTS (
                   SELECT 1 FROM frontier_log WHERE meter_id = %(m)s AND kind = %(kind)s
                     AND purpose = %(purpose)s AND at > now() - %(within)s)""",
            {"f": frontier_id, "m": meter_id, "actor": actor, "kind": ALARM,
             "purpose": purpose, "act": Jsonb(activities), "within": within},
        )  # fmt: skip
        added += cur.rowcount
    return added
