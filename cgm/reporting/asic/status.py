"""What was sent to the ASIC for a day, per frontier, and what it answered (read-only)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date, datetime
from typing import Any

import psycopg

from cgm.reporting import holds


@dataclass(frozen=True)
class SentDocument:
    frontier: str
    role: str
    meter: str
    file_name: str
    kind: str
    settled_version: int
    content_hash: str
    state: str
    created_at: datetime
    sent_at: datetime | None
    message_id: str | None
    final_at: datetime | None
    detail: str
    estimated: list[dict[str, Any]]


@dataclass(frozen=True)
class FrontierStatus:
    frontier: str
    held: str | None  # the hold's reason, when held now
    documents: list[SentDocument]

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for doc in d["documents"]:
            for k in ("created_at", "sent_at", "final_at"):
                doc[k] = doc[k].isoformat() if doc[k] else None
        return d


async def day_status(conn: psycopg.AsyncConnection, day: date) -> list[FrontierStatus]:
    """Every frontier with an active meter, its hold, and every document built for ``day``
    (oldest first, so corrections follow what they correct)."""
    held = await holds.current(conn)
    cur = await conn.execute(
        """SELECT f.code, d.role, m.serial, d.file_name, d.kind, d.settled_version,
                  d.content_hash, d.state, d.created_at, d.sent_at, s.message_id, d.final_at,
                  coalesce(d.detail ->> 'mensaje', s.detail ->> 'error', ''), d.estimated
           FROM asic_document d
           JOIN frontier f ON f.id = d.frontier_id
           JOIN meter m ON m.id = d.meter_id
           LEFT JOIN asic_submission s ON s.id = d.submission_id
           WHERE d.day = %s ORDER BY f.code, d.id""",
        (day,),
    )
    docs: dict[str, list[SentDocument]] = {}
    for row in await cur.fetchall():
        docs.setdefault(row[0], []).append(SentDocument(*row))
    cur = await conn.execute(
        """SELECT f.code FROM frontier f
           WHERE EXISTS (SELECT 1 FROM meter m WHERE m.frontier_id = f.id AND m.active)
           ORDER BY f.code"""
    )
    codes = [r[0] for r in await cur.fetchall()]
    codes += sorted(set(docs) - set(codes))
    return [
        FrontierStatus(c, held[c].reason if c in held else None, docs.get(c, [])) for c in codes
    ]
