"""Every user error of the ``cgm`` command is one line ``cgm: error: …`` with exit status 2,
never a traceback; ``cgm --version`` answers. Run as a user runs it: a real process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cgm.config import Settings
from cgm.migrate import upgrade


def _cgm(
    args: list[str], cwd: Path, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CGM_")}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "cgm.cli", *args],
        capture_output=True, text=True, timeout=timeout, cwd=cwd, env=environ,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["probe", "--protocol", "modbus", "--host", "127.0.0.1", "--port", "1502"], {},
         "'map'"),
        (["probe", "--protocol", "mqtt", "--host", "127.0.0.1", "--port", "1883"], {},
         "serial"),
        (["probe", "--protocol", "dlms", "--host", "127.0.0.1", "--port", "99999"], {},
         "not a TCP port"),
        (["registry", "list"], {"CGM_DATABASE_URL": "postgresql://ana:s3cr3t@[bad"},
         "CGM_DATABASE_URL"),
        (["user", "list"], {"CGM_DATABASE_URL": "not a url at all"}, "CGM_DATABASE_URL"),
        (["registry", "list"], {"CGM_API_PORT": "eighty"}, "CGM_API_PORT"),
        (["run", "--simulate", "-3"], {}, "--simulate: must be 0 or more"),
        (["run", "--simulate", "many"], {}, "--simulate: not a whole number"),
        (["no-such-command"], {}, "invalid choice"),
        (["vee", "--day", "2026-13-01"], {}, "--day"),
    ],
)  # fmt: skip
def test_user_errors_are_one_line_with_exit_2(
    tmp_path: Path, args: list[str], env: dict[str, str], needle: str
) -> None:
    done = _cgm(args, tmp_path, **env)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cgm: error: "), done.stderr
    assert needle in lines[0]
    assert "s3cr3t" not in done.stderr  # a malformed URL is not echoed with its password


@pytest.mark.parametrize("setting", ["CGM_METRICS_PORT", "CGM_API_PORT"])
def test_run_on_a_taken_port_says_which_setting_to_change(
    new_database: Callable[[], str], tmp_path: Path, setting: str
) -> None:
    """Another program on the metrics or API port: one error line naming the setting, exit
    2, and nothing left running (not a traceback)."""
    url = new_database()
    upgrade(url, Settings(database_url=url))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"CGM_METRICS_PORT": "0", "CGM_API_PORT": "0", setting: str(port)}
        done = _cgm(["run"], tmp_path, timeout=180, CGM_DATABASE_URL=url,
                    CGM_MQTT_URL="mqtt://127.0.0.1:1", **env)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("cgm: error: ") and f"127.0.0.1:{port}" in last, done.stderr
    assert f"set {setting}" in last


def test_version(tmp_path: Path) -> None:
    done = _cgm(["--version"], tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("cgm ")
    assert done.stdout.split()[1][0].isdigit()
