"""Sharing the fleet between collector processes through PostgreSQL alone.

Each cycle (the UTC hour being collected) a meter is claimed by inserting
``(meter_id, cycle)`` into ``collection_claim``: the primary key makes the claim exactly-once,
whatever the number of collectors. A collector proves it is alive by its heartbeat; an open
claim held by a collector whose heartbeat is older than ``stale_after`` is taken over with an
``UPDATE ... FOR UPDATE SKIP LOCKED``, so a dead collector's meters are read by the others
within the same cycle. Leadership (for singleton jobs such as reports) is a session-level
advisory lock held on the leader's connection: it disappears with the connection.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timedelta

import psycopg

LEADER_LOCK = 0x43474D5F4C454144  # "CGM_LEAD"


def new_collector_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


async def register(conn: psycopg.AsyncConnection, collector: str) -> None:
    await conn.execute(
        """INSERT INTO collector (id, host, pid) VALUES (%s, %s, %s)
           ON CONFLICT (id) DO UPDATE SET heartbeat = now()""",
        (collector, socket.gethostname(), os.getpid()),
    )
    await conn.commit()


async def heartbeat(conn: psycopg.AsyncConnection, collector: str) -> None:
    await conn.execute("UPDATE collector SET heartbeat = now() WHERE id = %s", (collector,))
    await conn.commit()


async def claim(
    conn: psycopg.AsyncConnection,
    collector: str,
    cycle: datetime,
    meter_ids: list[int],
    *,
    limit: int,
    stale_after: timedelta,
    fresh: list[int] | None = None,
    take_over: bool = True,
) -> tuple[list[int], int]:
    """Claim up to ``limit`` meters for ``cycle``: unclaimed ones of ``fresh`` (default
    ``meter_ids``) first, then (``take_over``) open claims on ``meter_ids`` of collectors
    that stopped heart-beating. Returns the meters now ours, and how many leading ``fresh``
    ids are known claimed now (ours or another collector's), so the caller need not offer
    them again: the caller offers a window of its list, and each claim costs the window,
    not the fleet."""
    fresh = meter_ids if fresh is None else fresh
    async with conn.transaction():
        cur = await conn.execute(
            """WITH cand AS (
                 SELECT u.m, u.i FROM unnest(%(ids)s::bigint[]) WITH ORDINALITY AS u(m, i)
                 WHERE NOT EXISTS (SELECT 1 FROM collection_claim c
                                   WHERE c.meter_id = u.m AND c.cycle = %(cycle)s)
                 LIMIT %(limit)s),
               ins AS (
                 INSERT INTO collection_claim (meter_id, cycle, collector)
                 SELECT m, %(cycle)s, %(me)s FROM cand
                 ON CONFLICT DO NOTHING
                 RETURNING meter_id)
               SELECT (SELECT coalesce(array_agg(meter_id), '{}') FROM ins),
                      (SELECT count(*) FROM cand), (SELECT coalesce(max(i), 0) FROM cand)""",
            {"cycle": cycle, "me": collector, "ids": fresh, "limit": limit},
        )
        row = await cur.fetchone()
        assert row is not None
        mine, candidates, last = list(row[0]), row[1], row[2]
        # Fewer candidates than the limit: every offered id was looked at, and all are
        # claimed now. Otherwise the ids up to the last candidate are (by us, or by another
        # collector whose insert won). (The scan follows the array's order; were it ever not
        # to, a skipped meter is found by the caller's final claim over the whole list, which
        # decides that the cycle is done.)
        scanned = len(fresh) if candidates < limit else int(last)
        room = limit - len(mine)
        if room > 0 and take_over:
            cur = await conn.execute(
                """UPDATE collection_claim c SET collector = %(me)s, claimed_at = now(),
                          attempts = c.attempts + 1
                   WHERE (c.meter_id, c.cycle) IN (
                       SELECT c2.meter_id, c2.cycle FROM collection_claim c2
                       JOIN collector k ON k.id = c2.collector
                       WHERE c2.cycle = %(cycle)s AND c2.done_at IS NULL
                         AND c2.meter_id = ANY(%(ids)s)
                         AND k.id <> %(me)s AND k.heartbeat < now() - %(stale)s
                       LIMIT %(room)s
                       FOR UPDATE OF c2 SKIP LOCKED)
                   RETURNING c.meter_id""",
                {
                    "cycle": cycle,
                    "me": collector,
                    "ids": meter_ids,
                    "room": room,
                    "stale": stale_after,
                },
            )
            mine += [r[0] for r in await cur.fetchall()]
    return mine, scanned


async def finish(
    conn: psycopg.AsyncConnection, collector: str, cycle: datetime, meter_id: int
) -> None:
    await conn.execute(
        """UPDATE collection_claim SET done_at = now()
           WHERE meter_id = %s AND cycle = %s AND collector = %s""",
        (meter_id, cycle, collector),
    )


async def try_lead(conn: psycopg.AsyncConnection) -> bool:
    """Take leadership if free; held until ``conn`` closes. Keep ``conn`` open while leading."""
    cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,))
    row = await cur.fetchone()
    await conn.commit()
    return bool(row and row[0])
