"""Least privilege: the service role (what `cgm run` connects as) does its job, and cannot
erase or bypass the audit trail: no TRUNCATE, ALTER, trigger control,
session_replication_role, drop_chunks, DELETE of readings, or write on the audit tables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cgm.config import Settings
from cgm.storage import Reading, SettledValue, write_readings, write_settled
from cgm.storage.audit import verify
from tests.storage.conftest import make_frontiers

T0 = datetime(2026, 4, 1, 5, tzinfo=UTC)
SERVICE = Settings().db_service_role
OWNER = Settings().db_owner_role


def as_service(url: str) -> str:
    params = conninfo_to_dict(url)
    params["user"] = SERVICE
    return make_conninfo(**params)


def timescale(url: str) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"
        ).fetchone() is not None


def test_roles_exist_and_the_owner_owns_the_schema(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        roles = dict(conn.execute(
            "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = ANY(%s)",
            ([OWNER, SERVICE],),
        ).fetchall())
        assert roles == {OWNER: True, SERVICE: True}
        owners = dict(conn.execute(
            """SELECT relname, pg_get_userbyid(relowner) FROM pg_class
               WHERE relname IN ('reading', 'settled_reading', 'audit_log', 'ingest_batch',
                                 'audit_chain', 'frontier')""",
        ).fetchall())
        assert set(owners.values()) == {OWNER}, owners


async def test_service_role_writes_and_its_changes_are_audited(db_url: str) -> None:
    (fid, mid), = await make_frontiers(db_url, 1)
    url = as_service(db_url)
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await write_readings(conn, [Reading(mid, 1, T0, 1.0, 0, T0)], source="t", actor="svc")
        res = await write_readings(
            conn, [Reading(mid, 1, T0, 2.0, 0, T0)], source="t", actor="svc"
        )
        assert res.superseded == 1
        await write_settled(conn, [SettledValue(fid, 1, T0, 1.0, "principal")], actor="vee")
        await write_settled(
            conn, [SettledValue(fid, 1, T0, 3.0, "manual")], actor="ana", reason="meter swap"
        )
        cur = await conn.execute(
            "SELECT version, superseded_by FROM reading_version"
            " WHERE meter_id = %s ORDER BY version",
            (mid,),
        )
        assert await cur.fetchall() == [(1, "svc"), (2, None)]
        cur = await conn.execute(
            "SELECT db_user, table_name FROM audit_log WHERE (old_row->>'meter_id')::bigint = %s"
            " OR ((old_row->>'frontier_id')::bigint = %s AND table_name = 'settled_reading')",
            (mid, fid),
        )
        assert sorted(await cur.fetchall()) == [
            (SERVICE, "reading"), (SERVICE, "settled_reading")
        ]
        cur = await conn.execute("SELECT db_user FROM ingest_batch WHERE id = %s",
                                 (res.batch_id,))
        assert await cur.fetchone() == (SERVICE,)
    assert verify(url).ok


def test_service_role_start_checks_the_schema_without_changing_it(db_url: str) -> None:
    """`cgm run` upgrades at start; as the service role that is a check, not a change."""
    from cgm.migrate import upgrade

    with psycopg.connect(db_url) as conn:
        before = conn.execute("SELECT version, applied_at FROM schema_migration").fetchall()
    result = upgrade(as_service(db_url), Settings(database_url=as_service(db_url)))
    assert result.applied == [] and result.timescale == timescale(db_url)
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT version, applied_at FROM schema_migration").fetchall() \
            == before


FORBIDDEN = [
    ("TRUNCATE audit_log", "permission denied"),
    ("TRUNCATE reading", "permission denied"),
    ("TRUNCATE settled_reading", "permission denied"),
    ("TRUNCATE ingest_batch", "permission denied"),
    ("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_change", "must be owner"),
    ("ALTER TABLE reading DISABLE TRIGGER reading_audit", "must be owner"),
    ("ALTER TABLE settled_reading DISABLE TRIGGER USER", "must be owner"),
    ("ALTER TABLE reading ADD COLUMN x int", "must be owner"),
    ("DROP TRIGGER reading_audit ON reading", "must be owner"),
    ("DROP TABLE audit_log", "must be owner"),
    ("SET session_replication_role = replica", "permission denied"),
    ("INSERT INTO audit_log (table_name, op, actor) VALUES ('reading', 'U', 'forger')",
     "permission denied"),
    ("UPDATE audit_log SET actor = 'x'", "permission denied"),
    ("DELETE FROM audit_log", "permission denied"),
    ("UPDATE audit_chain SET seq = 0", "permission denied"),
    ("DELETE FROM reading", "permission denied"),
    ("DELETE FROM settled_reading", "permission denied"),
    ("DELETE FROM ingest_batch", "permission denied"),
    ("SELECT chain_link('audit_log', 1)", "permission denied"),
    ("CREATE TABLE intruder (x int)", "permission denied"),
]


@pytest.mark.parametrize(("statement", "error"), FORBIDDEN, ids=[s for s, _ in FORBIDDEN])
def test_service_role_cannot(db_url: str, statement: str, error: str) -> None:
    with psycopg.connect(as_service(db_url)) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=error):
            conn.execute(statement)


def test_service_role_cannot_drop_chunks(db_url: str) -> None:
    """On TimescaleDB drop_chunks needs the hypertable's owner; plain PostgreSQL has no
    drop_chunks at all (and never drops readings)."""
    older = datetime.now(UTC) - timedelta(days=3650)
    with psycopg.connect(as_service(db_url)) as conn:
        for table in ("reading", "settled_reading"):
            if timescale(db_url):
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="owner"):
                    conn.execute("SELECT drop_chunks(%s, older_than => %s)", (table, older))
            else:
                with pytest.raises(psycopg.errors.UndefinedFunction):
                    conn.execute("SELECT drop_chunks(%s, older_than => %s)", (table, older))
            conn.rollback()


def test_service_role_refuses_a_schema_that_is_behind(new_database) -> None:  # noqa: ANN001
    from cgm.migrate import MigrationError, upgrade

    url = new_database()
    upgrade(url, Settings(database_url=url))
    with psycopg.connect(url) as conn:
        conn.execute("DELETE FROM schema_migration WHERE version = 44")
    with pytest.raises(MigrationError, match="pending: 0044_audit_chain_linear.*may not change"):
        upgrade(as_service(url), Settings(database_url=as_service(url)))
