"""``cgm vee``: settle a day, edit a value (level 2 only), import SCADA power."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import psycopg
import pytest

from cgm.cli import main
from cgm.config import get_settings
from cgm.localtime import hour_starts
from cgm.security.users import add_user
from tests.vee.conftest import Frontier, load, make_frontier, put

DAY = date(2026, 2, 3)


@pytest.fixture
def cli_db(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("CGM_DATABASE_URL", db_url)
    monkeypatch.setenv("CGM_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield db_url
    get_settings.cache_clear()


PASSWORD = "correct horse battery"


def _user(url: str, name: str, level: int) -> None:
    async def go() -> None:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            await add_user(conn, name, PASSWORD, level, actor="pytest")
            await conn.commit()

    asyncio.run(go())


def _frontier(url: str, skip: list[int]) -> Frontier:
    async def go() -> Frontier:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            f = await make_frontier(conn)
            await put(conn, f.principal, DAY, load(f, DAY), skip=skip)
            return f

    return asyncio.run(go())


def test_cli_settles_edits_and_imports_power(cli_db: str, tmp_path: Path, capsys) -> None:
    f = _frontier(cli_db, skip=[6])
    assert main(["vee", "--day", DAY.isoformat(), "--frontier", f.code, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["values"] == 24 and out["by_method"] == {"linear_interpolation": 1}

    suffix = f.code[3:]
    reader, editor = f"lee{suffix}", f"ana{suffix}"
    _user(cli_db, reader, 1)
    _user(cli_db, editor, 2)
    t = hour_starts(DAY)[6].isoformat()
    edit = ["vee", "edit", "--frontier", f.code, "--channel", "active_import"]
    edit += ["--period-start", t, "--value", "77.5", "--reason", "site visit"]
    edit += ["--password-env", "CGM_TEST_PW"]
    os.environ["CGM_TEST_PW"] = "wrong password here"
    assert main([*edit, "--user", editor]) == 2
    assert "wrong password" in capsys.readouterr().err
    os.environ["CGM_TEST_PW"] = PASSWORD
    assert main([*edit, "--user", reader]) == 2  # level 1 may not edit
    assert "needs level 2" in capsys.readouterr().err
    assert main([*edit, "--user", editor]) == 0
    assert "manual, version 2" in capsys.readouterr().out
    with psycopg.connect(cli_db) as conn:
        rows = conn.execute(
            """SELECT version, source, actor FROM settled_version
               WHERE frontier_id = %s AND interval_start = %s ORDER BY version""",
            (f.id, hour_starts(DAY)[6]),
        ).fetchall()
        log = conn.execute(
            "SELECT actor, purpose FROM frontier_log WHERE frontier_id = %s AND kind = %s",
            (f.id, "manual_edit"),
        ).fetchall()
    assert rows == [(1, "estimate", "vee"), (2, "manual", f"cli:{editor}")]
    assert log == [(f"cli:{editor}", "site visit")]

    csv = tmp_path / "power.csv"
    csv.write_text(
        "frontier,channel,measured_at,kw\n"
        f"{f.code},active_import,{hour_starts(DAY)[8].isoformat()},12.5\n"
    )
    assert main(["vee", "import-power", str(csv)]) == 0
    assert "1 power samples stored" in capsys.readouterr().out
    csv.write_text("frontier,channel,measured_at,kw\nFrt1,active_import,2026-01-01T00:00,1\n")
    assert main(["vee", "import-power", str(csv)]) == 2  # naive time: refused
    assert main(["vee", "--day", DAY.isoformat(), "--frontier", "Frt999999999"]) == 2
