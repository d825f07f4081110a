"""Late readings and manual edits of old settled days land in compressed chunks on
TimescaleDB: the write path stays idempotent and versioned there, and every superseded value
is audited under its logical table and visible in the version views. On plain PostgreSQL
there is nothing to compress and the same writes give the same results."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import psycopg

from cgm.config import Settings
from cgm.migrate import upgrade
from cgm.storage import Reading, SettledValue, write_readings, write_settled
from cgm.storage.audit import verify
from tests.storage.conftest import make_frontiers

H = timedelta(hours=1)
DAY = (datetime.now(UTC) - timedelta(days=120)).replace(hour=5, minute=0, second=0,
                                                         microsecond=0)


def _compress(url: str, timescale: bool) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        if not timescale:
            kinds = conn.execute(
                "SELECT relname, relkind FROM pg_class"
                " WHERE relname IN ('reading', 'settled_reading') ORDER BY 1"
            ).fetchall()
            assert kinds == [("reading", "r"), ("settled_reading", "r")]  # plain tables
            return
        for table in ("reading", "settled_reading"):
            conn.execute("SELECT compress_chunk(c) FROM show_chunks(%s) c", (table,))
        compressed = dict(conn.execute(
            "SELECT hypertable_name, count(*) FILTER (WHERE is_compressed)"
            " FROM timescaledb_information.chunks GROUP BY 1"
        ).fetchall())
        assert compressed["reading"] >= 1 and compressed["settled_reading"] >= 1


async def test_dml_into_compressed_chunks_is_versioned_and_audited(
    new_database: Callable[[], str],
) -> None:
    url = new_database()
    result = upgrade(url, Settings(database_url=url))
    (fid, mid), = await make_frontiers(url, 1)
    async with await psycopg.AsyncConnection.connect(url) as conn:
        # A day of readings with hour 10 missing, and the day settled.
        await write_readings(
            conn, [Reading(mid, 1, DAY + h * H, 10.0 + h, 0, DAY + 26 * H)
                   for h in range(24) if h != 10],
            source="collector", actor="svc",
        )
        await write_settled(
            conn, [SettledValue(fid, 1, DAY + h * H, 20.0 + h, "principal") for h in range(24)],
            actor="vee",
        )
    _compress(url, result.timescale)

    async with await psycopg.AsyncConnection.connect(url) as conn:
        late = await write_readings(
            conn,
            [
                Reading(mid, 1, DAY + 10 * H, 20.0, 0, DAY + 30 * 24 * H),  # missing hour
                Reading(mid, 1, DAY + 3 * H, 99.0, 0, DAY + 30 * 24 * H),  # a new value
                Reading(mid, 1, DAY + 4 * H, 14.0, 0, DAY + 30 * 24 * H),  # the same value
            ],
            source="collector", actor="svc", reason="late re-read",
        )
        assert (late.inserted, late.superseded, late.unchanged) == (1, 1, 1)
        again = await write_readings(
            conn, [Reading(mid, 1, DAY + 3 * H, 99.0, 0, DAY + 31 * 24 * H)],
            source="collector", actor="svc",
        )
        assert (again.inserted, again.superseded, again.unchanged) == (0, 0, 1)
        edit = await write_settled(
            conn, [SettledValue(fid, 1, DAY + 7 * H, 5.5, "manual")],
            actor="ana", reason="meter replaced, value from the backup log",
        )
        assert edit.superseded == 1
        rerun = await write_settled(
            conn, [SettledValue(fid, 1, DAY + 7 * H, 27.0, "principal")], actor="vee"
        )
        assert rerun.kept_manual == 1

        cur = await conn.execute(
            "SELECT interval_start, version, value, superseded_by FROM reading_version"
            " WHERE meter_id = %s AND interval_start IN (%s, %s) ORDER BY 1, 2",
            (mid, DAY + 3 * H, DAY + 10 * H),
        )
        assert await cur.fetchall() == [
            (DAY + 3 * H, 1, 13.0, "svc"), (DAY + 3 * H, 2, 99.0, None),
            (DAY + 10 * H, 1, 20.0, None),
        ]
        cur = await conn.execute(
            "SELECT version, value, source, actor, reason FROM settled_version"
            " WHERE frontier_id = %s AND interval_start = %s ORDER BY version",
            (fid, DAY + 7 * H),
        )
        assert await cur.fetchall() == [
            (1, 27.0, "principal", "vee", None),
            (2, 5.5, "manual", "ana", "meter replaced, value from the backup log"),
        ]
        cur = await conn.execute(
            "SELECT table_name, op, actor, reason FROM audit_log"
            " WHERE table_name IN ('reading', 'settled_reading') ORDER BY id"
        )
        rows = await cur.fetchall()
        assert rows == [
            ("reading", "U", "svc", f"ingest_batch {late.batch_id}: late re-read"),
            ("settled_reading", "U", "ana",
             f"ingest_batch {edit.batch_id}: meter replaced, value from the backup log"),
        ]
        cur = await conn.execute("SELECT count(*) FROM reading WHERE meter_id = %s", (mid,))
        assert await cur.fetchone() == (24,)
    assert verify(url).ok
