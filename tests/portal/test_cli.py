"""``cgm portal import|list|change-owner``: writes need a level-2 user."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from cgm.cli import main
from cgm.config import get_settings
from cgm.security.users import add_user
from tests.portal.conftest import client, tag, unit, write

PASSWORD = "correct horse battery"


@pytest.fixture
def cli_db(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("CGM_DATABASE_URL", db_url)
    monkeypatch.setenv("CGM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PORTAL_PW", PASSWORD)
    get_settings.cache_clear()
    yield db_url
    get_settings.cache_clear()


def _user(url: str, level: int) -> str:
    name = f"p{tag()}"

    async def go() -> None:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            await add_user(conn, name, PASSWORD, level, actor="pytest")
            await conn.commit()

    asyncio.run(go())
    return name


def test_import_list_and_change_owner(cli_db: str, tmp_path: Path, capsys) -> None:
    admin, reader = _user(cli_db, 2), _user(cli_db, 1)
    number = tag()
    a = unit(client_numbers=[client(number=number)])
    b = unit()
    f = write(tmp_path / "units.yaml", [a, b])
    auth = ["--password-env", "PORTAL_PW"]
    assert main(["portal", "import", str(f), "--user", reader, *auth]) == 2
    assert "needs level 2" in capsys.readouterr().err
    assert main(["portal", "import", str(f), "--user", admin, *auth]) == 0
    assert "2 units" in capsys.readouterr().out
    assert main(["portal", "list", "--json"]) == 0
    listed = {u["code"]: u for u in json.loads(capsys.readouterr().out)}
    assert listed[a["code"]]["meters_owned"] == 1 and listed[b["code"]]["meters_owned"] == 0
    args = ["--company", "Chilquinta", "--client-number", number, "--to", b["code"]]
    assert main(["portal", "change-owner", *args, "--reason", "moved", "--user", admin, *auth]) == 0
    assert f"owner is now {b['code']}" in capsys.readouterr().out
    assert main(["portal", "list", "--json"]) == 0
    listed = {u["code"]: u for u in json.loads(capsys.readouterr().out)}
    assert listed[b["code"]]["meters_owned"] == 1 and listed[a["code"]]["meters_associated"] == 1


def test_bad_file_imports_nothing(cli_db: str, tmp_path: Path, capsys) -> None:
    admin = _user(cli_db, 2)
    good, bad = unit(), unit(surface_m2=-3)
    f = write(tmp_path / "units.yaml", [good, bad])
    assert main(["portal", "import", str(f), "--user", admin, "--password-env", "PORTAL_PW"]) == 2
    err = capsys.readouterr().err
    assert "nothing imported" in err and "units.yaml:" in err and "surface_m2" in err
    assert main(["portal", "list", "--json"]) == 0
    assert good["code"] not in capsys.readouterr().out
