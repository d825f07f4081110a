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


def _read_tty(leader: int, until: str, timeout: float = 10.0) -> str:
    drawn = ""
    deadline = time.monotonic() + timeout
    while until not in drawn and time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            drawn += os.read(leader, 65536).decode()
    return drawn


async def test_the_first_catch_up_of_cgm_run_shows_meters_and_intervals_on_a_terminal(
    new_database, tmp_path: Path, mqtt_broker: tuple[str, int]
) -> None:
    import psycopg

    from cgm import registry
    from cgm.collection.engine import Collector, EngineConfig
    from cgm.collection.schedule import CollectionJob
    from cgm.collection.session import SessionPolicy
    from cgm.config import Settings
    from cgm.migrate import upgrade
    from cgm.security import secret_box
    from cgm.service import Service
    from simulators.fleet import build_fleet, inventory, start_fleet

    fleet = build_fleet(3, seed=9, mix={"dlms": 0.5, "modbus": 0.5}, first_code=88901)
    for _, meter in fleet.meters():
        meter.depth = 24 * 4  # four days of memory to catch up
    await start_fleet(fleet, mqtt=mqtt_broker)
    config = EngineConfig(policy=SessionPolicy(timeout=5.0, attempts=1, backoff=0.01))

    def job_on_a_new_database() -> CollectionJob:
        url = new_database()
        settings = Settings(database_url=url, data_dir=tmp_path)
        upgrade(url, settings)
        box = secret_box(settings)
        path = tmp_path / "fleet.yaml"
        path.write_text(yaml.safe_dump(inventory(fleet)))
        with psycopg.connect(url) as conn:
            registry.import_inventory(conn, registry.load(path), box, actor="pytest")
        job = CollectionJob(Service(settings, db_url=url), config)
        job.collector = Collector(url, box, config)
        return job

    leader, follower = pty.openpty()
    try:
        with os.fdopen(follower, "w") as tty, (tmp_path / "log").open("w+") as log:
            silent = job_on_a_new_database()
            silent.progress_stream = log  # not a terminal
            await silent.run()
            assert silent.last is not None and silent.last.ok == 6
            log.seek(0)
            assert log.read() == ""
            job = job_on_a_new_database()
            job.progress_stream = tty
            await job.run()
            assert job.last is not None and job.last.ok == 6
            drawn = _read_tty(leader, "\n")
            stored = job.last.intervals_stored
            # Later cycles are not catch-ups: nothing more is drawn.
            await job.run()
            later = _read_tty(leader, "\n", timeout=1.0)
    finally:
        os.close(leader)
        await fleet.stop()
    assert "first catch-up, meters: 6/6 (100 %)" in drawn
    assert stored > 0 and f"{stored} intervals stored" in drawn and "\r" in drawn
    assert later == ""
