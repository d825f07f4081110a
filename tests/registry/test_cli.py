"""``cgm registry`` commands end to end (import, list --json, validate, errors)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from cgm.cli import main
from cgm.config import get_settings
from tests.registry.conftest import frontier, meter, new_code

DATA = Path(__file__).parent / "data"


@pytest.fixture
def cli_env(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("CGM_DATABASE_URL", db_url)
    monkeypatch.setenv("CGM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("CGM_SECRET_KEY", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def ops(cli_env: None, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A level-2 user (a fresh name per test: the database is shared) and the CLI arguments
    that authenticate it."""
    name = f"ops-{new_code().lower()}"
    monkeypatch.setenv("CGM_T_OPS_PW", "ops-password-long-enough")
    assert main(["user", "add", name, "--level", "2", "--password-env", "CGM_T_OPS_PW"]) == 0
    return ["--user", name, "--password-env", "CGM_T_OPS_PW"]


def test_import_then_list_json_without_secrets(
    ops: list[str],
    write_yaml: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code = new_code()
    monkeypatch.setenv("CGM_T_CLI_L1", "cli-level1-secret")
    fr = frontier(
        code,
        monthly_energy_mwh=600,
        installed_capacity_mva=0.5,
        meters=[
            meter(
                f"{code}-P",
                endpoint="10.1.1.1:4059",
                credentials={"level1": {"secret": "env:CGM_T_CLI_L1", "client": "16"}},
            )
        ],
    )
    path = write_yaml(fr)
    assert main(["registry", "import", str(path), *ops]) == 0
    out = capsys.readouterr().out
    assert "frontiers 1 new" in out and "backup_missing" in out
    assert main(["registry", "list", "--json", "--frontier", code]) == 0
    text = capsys.readouterr().out
    assert "cli-level1-secret" not in text
    [row] = json.loads(text)
    assert (row["code"], row["point_type"], row["table1_type"], row["clock_limit_s"]) == (
        code,
        2,
        2,
        30,
    )
    [m] = row["meters"]
    assert (m["serial"], m["endpoint"], m["credentials"]) == (
        f"{code}-P",
        "10.1.1.1:4059",
        [{"level": 1, "client": "16"}],
    )
    assert [v["rule"] for v in row["violations"]] == ["backup_missing", "level2_secret_missing"]
    assert main(["registry", "list"]) == 0
    assert code in capsys.readouterr().out


def test_import_bad_file_exit_2_with_file_and_line(
    ops: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["registry", "import", str(DATA / "bad_rows.yaml"), *ops]) == 2
    err = capsys.readouterr().err
    assert f"{DATA / 'bad_rows.yaml'}:22:" in err and "nothing imported" in err


@pytest.mark.parametrize(
    ("name", "status"),
    [("bad_rows.csv", 2), ("unknown_field.yaml", 2)],
)
def test_validate_status(name: str, status: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["registry", "validate", str(DATA / name)]) == status


def test_validate_reports_violations_with_status_1(
    write_yaml: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_yaml(frontier("Frt1", meters=[meter("P", accuracy_active="1")]))
    assert main(["registry", "validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert "accuracy_active_below" in out and "backup_missing" in out
    path = write_yaml(frontier("Frt1"))
    assert main(["registry", "validate", str(path)]) == 0


def test_import_needs_an_authenticated_level2_user(
    ops: list[str],
    write_yaml: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    db_url: str,
) -> None:
    """No self-declared actor: the import names the user who proved their password."""
    code = new_code()
    path = write_yaml(frontier(code))
    monkeypatch.setenv("CGM_T_BAD_PW", "not-the-password-at-all")
    monkeypatch.setenv("CGM_T_L1_PW", "reader-password-long")
    reader = f"reader-{code.lower()}"
    assert main(["user", "add", reader, "--level", "1", "--password-env", "CGM_T_L1_PW"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit):  # --user is required
        main(["registry", "import", str(path)])
    assert main(["registry", "import", str(path), "--user", ops[1],
                 "--password-env", "CGM_T_BAD_PW"]) == 2  # fmt: skip
    assert "wrong password" in capsys.readouterr().err
    assert main(["registry", "import", str(path), "--user", reader,
                 "--password-env", "CGM_T_L1_PW"]) == 2  # fmt: skip
    assert "needs level 2" in capsys.readouterr().err
    assert main(["registry", "list", "--json", "--frontier", code]) == 0
    assert json.loads(capsys.readouterr().out) == []  # nothing imported
    assert main(["registry", "import", str(path), *ops]) == 0
    with psycopg.connect(db_url) as conn:
        actors = conn.execute(
            "SELECT DISTINCT actor FROM audit_log WHERE table_name = 'frontier' "
            "AND new_row->>'code' = %s",
            (code,),
        ).fetchall()
    assert actors == [(f"cli:{ops[1]}",)]


def test_import_creates_market_users_and_shows_passwords_once(
    ops: list[str],
    write_yaml: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    db_url: str,
) -> None:
    """``registry import --market-users``: the network operator named in the file gets a
    level-1 user scoped to its frontiers; a generated password goes once to the operator
    (here a 0600 file), never again; the registry keeps the new fields."""
    code, op = new_code(), f"OR{new_code()}"
    fr = frontier(code, monthly_energy_mwh=600, network_operator=op, asic_period="monthly",
                  calibration_interval_years=2, meters=[meter(f"{code}-P")])  # fmt: skip
    pwfile = tmp_path / "passwords.tsv"
    assert main(["registry", "import", str(write_yaml(fr)), *ops, "--market-users",
                 "--passwords-file", str(pwfile)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert f"market user or.{op} created, level 1; password written to {pwfile}" in out
    assert f"or.{op}: 1 frontier(s)" in out
    assert pwfile.stat().st_mode & 0o777 == 0o600
    lines = dict(line.split("\t") for line in pwfile.read_text().splitlines())
    assert len(lines[f"or.{op}"]) >= 24 and lines[f"or.{op}"] not in out
    assert main(["user", "scope", f"or.{op}", "--show"]) == 0
    assert capsys.readouterr().out.strip() == f"or.{op}: {code}"
    # Again: nothing created, so no password anywhere; an existing file is refused.
    assert main(["user", "sync-market", *ops]) == 0
    out = capsys.readouterr().out
    assert "created" not in out and f"or.{op}: 1 frontier(s)" in out
    assert main(["user", "sync-market", *ops, "--passwords-file", str(pwfile)]) == 2
    assert main(["registry", "list", "--json", "--frontier", code]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["network_operator"], row["asic_period"], row["calibration_interval_years"]) == (
        op, "monthly", 2)  # fmt: skip
    with psycopg.connect(db_url) as c:
        level = c.execute("SELECT level FROM app_user WHERE username = %s", (f"or.{op}",))
        assert level.fetchone() == (1,)
