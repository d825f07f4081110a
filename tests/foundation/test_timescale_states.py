"""TimescaleDB in each state a server can be in: absent, installed but not preloaded (the
half-installed state, tested against this machine's own PostgreSQL on 5432), and preloaded.

Half-installed, `CREATE EXTENSION timescaledb` fails with a FATAL error that ends the
session; the upgrade must warn, build plain tables on a live connection, and leave the
Timescale migrations waiting until the server preloads the extension."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cgm import migrate
from cgm.config import Settings, get_settings
from cgm.migrate import _preloaded, pending, upgrade
from tests.fixtures.postgres import LOCAL, _reachable

TS_MIGRATIONS = [f"{m.version:04d}_{m.name}" for m in migrate.migrations() if m.requires_timescale]


def _state(url: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        if not conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
        ).fetchone():
            return "absent"
        preload = conn.execute("SHOW shared_preload_libraries").fetchone()[0]
    return "preloaded" if _preloaded(preload) else "half"


@pytest.fixture
def local_database(pg_server: str) -> Iterator[str]:
    """A fresh database on this machine's own server (5432), else on the test server."""
    server = LOCAL if _reachable(LOCAL) else pg_server
    name = f"cgm_test_half_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(server)
    params["dbname"] = name
    yield make_conninfo(**params)
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_preload_setting_is_parsed() -> None:
    assert _preloaded("timescaledb")
    assert _preloaded("pg_stat_statements, timescaledb")
    assert _preloaded('"timescaledb",auto_explain')
    assert _preloaded("$libdir/timescaledb")
    assert not _preloaded("")
    assert not _preloaded("pg_stat_statements")
    assert not _preloaded("timescaledb_toolkit")


def test_upgrade_on_this_machines_server(
    local_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    state = _state(local_database)
    result = upgrade(local_database, Settings(database_url=local_database))
    with psycopg.connect(local_database) as conn:  # the schema is there and usable
        assert conn.execute("SELECT count(*) FROM channel").fetchone() == (4,)
        hyper = conn.execute(
            "SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"
        ).fetchone() is not None
    if state == "preloaded":
        assert result.timescale and hyper and result.warning is None
        return
    assert not result.timescale and not hyper
    assert result.skipped == TS_MIGRATIONS
    assert pending(local_database) == []  # waiting, not pending: `cgm run` may start
    if state == "absent":
        assert result.warning is None
        return
    # Half-installed: the state is real (a bare CREATE EXTENSION ends the session) ...
    with psycopg.connect(local_database, autocommit=True) as conn:
        with pytest.raises(psycopg.Error, match="must be preloaded"):
            conn.execute("CREATE EXTENSION timescaledb")
        assert conn.closed or conn.broken
    # ... and the upgrade said so clearly instead of dying on a closed connection.
    assert result.warning is not None
    assert "not in shared_preload_libraries" in result.warning
    assert "using plain PostgreSQL tables" in result.warning
    assert any("shared_preload_libraries" in r.getMessage() for r in caplog.records)
    again = upgrade(local_database, Settings(database_url=local_database))
    assert again.applied == [] and again.skipped == TS_MIGRATIONS


def test_cli_upgrade_warns_on_this_machines_server(
    local_database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cgm.cli import main

    monkeypatch.setenv("CGM_DATABASE_URL", local_database)
    get_settings.cache_clear()
    assert main(["db", "upgrade"]) == 0
    get_settings.cache_clear()
    out, err = capsys.readouterr()
    if _state(local_database) == "half":
        assert "warning: timescaledb is installed on the server but not in" in err
        assert "waiting for TimescaleDB: 0004_timescale" in out
    else:
        assert "warning" not in err


async def test_waiting_migrations_apply_once_the_server_preloads(
    new_database: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """First upgrade as if the server did not preload the extension; then a real upgrade.
    On a preloaded server the waiting migrations apply and convert tables holding data
    (versions included); on plain PostgreSQL they keep waiting and nothing changes."""
    from cgm.storage import Reading, write_readings
    from tests.storage.conftest import make_frontiers

    url = new_database()
    real = migrate._timescale_available
    monkeypatch.setattr(migrate, "_timescale_available", lambda u: (False, "not preloaded"))
    first = upgrade(url, Settings(database_url=url))
    assert not first.timescale and first.skipped == TS_MIGRATIONS
    (_, mid), = await make_frontiers(url, 1)
    t0 = datetime(2026, 1, 1, 5, tzinfo=UTC)
    async with await psycopg.AsyncConnection.connect(url) as conn:
        for v in (1.0, 2.0):
            await write_readings(conn, [Reading(mid, 1, t0, v, 0, t0)], source="t", actor="t")
    monkeypatch.setattr(migrate, "_timescale_available", real)
    second = upgrade(url, Settings(database_url=url))
    with psycopg.connect(url) as conn:
        versions = conn.execute(
            "SELECT version, value FROM reading_version WHERE meter_id = %s ORDER BY version",
            (mid,),
        ).fetchall()
        hypertables = conn.execute(
            "SELECT to_regclass('timescaledb_information.hypertables') IS NOT NULL"
        ).fetchone()[0] and [
            r[0] for r in conn.execute(
                "SELECT hypertable_name FROM timescaledb_information.hypertables"
                " ORDER BY 1"
            )
        ]
    assert versions == [(1, 1.0), (2, 2.0)]
    if second.timescale:
        assert second.applied == TS_MIGRATIONS
        assert hypertables == ["reading", "settled_reading"]
    else:
        assert second.applied == [] and second.skipped == TS_MIGRATIONS
        assert not hypertables
