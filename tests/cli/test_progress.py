"""Progress of long work: drawn on a terminal (a real pseudo-terminal here), silent when
stderr is a pipe or a file, so scripts and logs see only the command's output."""

from __future__ import annotations

import os
import pty
import select
import time
from pathlib import Path

import yaml

from cgm.cli import main
from cgm.progress import Progress


def test_progress_is_drawn_on_a_terminal_only(tmp_path: Path) -> None:
    leader, follower = pty.openpty()
    drawn = ""
    with os.fdopen(follower, "w") as tty, (tmp_path / "log").open("w+") as log:
        for stream in (tty, log):
            with Progress("importing frontiers", 3, stream=stream, interval_s=0) as bar:
                for _ in range(3):
                    bar.advance()
        log.seek(0)
        assert log.read() == ""  # not a terminal: nothing at all
        # Read while the terminal is still open: once its writing side closes, Linux may
        # answer EIO before handing over what is still buffered.
        deadline = time.monotonic() + 10
        while "\n" not in drawn and time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                drawn += os.read(leader, 4096).decode()
    os.close(leader)
    assert "importing frontiers: 3/3 (100 %)" in drawn and "\r" in drawn


def test_registry_import_prints_no_progress_when_stderr_is_not_a_terminal(
    db_url: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    from cgm.config import get_settings
    from tests.registry.conftest import frontier, meter, new_code

    frontiers = []
    for _ in range(30):
        code = new_code()
        frontiers.append(frontier(code, meters=[meter(f"P{code}"), meter(f"B{code}", "backup")]))
    inv = tmp_path / "inv.yaml"
    inv.write_text(yaml.safe_dump({"frontiers": frontiers}))
    monkeypatch.setenv("CGM_DATABASE_URL", db_url)
    monkeypatch.setenv("CGM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CGM_T_PROGRESS_PW", "progress-password-long")
    get_settings.cache_clear()
    name = f"ops-{new_code().lower()}"  # imports authenticate a level-2 user
    try:
        auth = ["--user", name, "--password-env", "CGM_T_PROGRESS_PW"]
        assert main(["user", "add", name, "--level", "2", *auth[2:]]) == 0
        capsys.readouterr()
        assert main(["registry", "import", str(inv), *auth]) == 0
    finally:
        get_settings.cache_clear()
    captured = capsys.readouterr()
    assert "frontiers 30 new" in captured.out
    assert "importing frontiers" not in captured.err
