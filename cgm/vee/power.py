"""Import of active-power samples from another source (SCADA) for art. 38 (a) estimation.

CSV with a header ``frontier,channel,measured_at,kw`` (ISO 8601 times with a zone, kW in
primary units). Idempotent: a sample already stored with the same value is left alone, a
different value replaces it (the old one stays in the audit log).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import psycopg

from cgm.storage.common import channel_id, set_audit_context


class PowerImportError(ValueError):
    """The file is malformed; nothing was imported."""


def read_csv(path: Path) -> list[tuple[str, int, datetime, float]]:
    rows = []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        need = {"frontier", "channel", "measured_at", "kw"}
        if not need <= set(reader.fieldnames or ()):
            raise PowerImportError(f"{path}: header must have {sorted(need)}")
        for n, r in enumerate(reader, start=2):
            try:
                at = datetime.fromisoformat(r["measured_at"])
                if at.tzinfo is None:
                    raise ValueError("measured_at needs a time zone")
                kw = float(r["kw"])
                if not kw >= 0:
                    raise ValueError("kw must be a non-negative number")
                rows.append((r["frontier"], channel_id(r["channel"]), at, kw))
            except (ValueError, KeyError) as exc:
                raise PowerImportError(f"{path}:{n}: {exc}") from None
    return rows


async def import_power(
    conn: psycopg.AsyncConnection,
    rows: Iterable[tuple[str, int | str, datetime, float]],
    *,
    source: str = "scada",
    actor: str = "import",
) -> int:
    """Store samples (frontier code, channel, time, kW); returns how many were new or
    changed. All or nothing: an unknown frontier rejects the batch."""
    items = [(f, channel_id(c), at, float(kw)) for f, c, at, kw in rows]
    async with conn.transaction():
        await set_audit_context(conn, actor, f"power import ({source})")
        cur = await conn.execute(
            "SELECT code, id FROM frontier WHERE code = ANY(%s)",
            (sorted({f for f, *_ in items}),),
        )
        ids = dict(await cur.fetchall())
        unknown = sorted({f for f, *_ in items} - set(ids))
        if unknown:
            raise PowerImportError(f"unknown frontier(s): {', '.join(unknown[:10])}")
        changed = 0
        async with conn.cursor() as c:
            for f, ch, at, kw in items:
                await c.execute(
                    """INSERT INTO power_sample (frontier_id, channel, measured_at, kw, source)
                       VALUES (%s, %s, %s, %s, %s)
                       ON CONFLICT (frontier_id, channel, measured_at) DO UPDATE
                         SET kw = excluded.kw, source = excluded.source, imported_at = now()
                         WHERE power_sample.kw IS DISTINCT FROM excluded.kw""",
                    (ids[f], ch, at, kw, source),
                )
                changed += c.rowcount
    return changed
