"""Settling yields the CPU to the service: the VEE process runs at a lower priority (nice +10
by default, or SCHED_IDLE) and so does every database backend it works through, when that
backend is provably its own (Linux: /proc, nice, SCHED_IDLE and CPU affinity, as on every
host cgm runs on)."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import psycopg
import pytest

from cgm.config import Settings
from cgm.vee import priority
from cgm.vee import run as vee_run
from cgm.vee.worker import VeeWorker
from tests.vee.conftest import load, make_frontier, put
from tests.vee.test_worker import DAY, NOW


def _may_reprioritise(pid: int) -> bool:
    """Whether this process has the right to change ``pid``'s scheduling (same user, or root)."""
    return os.geteuid() == 0 or os.stat(f"/proc/{pid}").st_uid == os.geteuid()


async def _backend(db_url: str, app: str) -> int:
    """The newest backend of application ``app`` (the worker's: one that ended may linger)."""
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
        cur = await c.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
            " AND datname = current_database() ORDER BY backend_start DESC LIMIT 1",
            (app,),
        )
        row = await cur.fetchone()
    assert row is not None, f"no backend of {app!r}"
    return row[0]


def _nice(pid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, pid)


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@asynccontextmanager
async def _worker_after_a_day(
    db_url: str, conn: psycopg.AsyncConnection, **kw: object
) -> AsyncIterator[tuple[int, int, set[int]]]:
    """A VEE worker (``kw``: its settings) that has settled one frontier's day: (its pid, the
    backend of its connection, which stays open, the CPUs VEE should keep to)."""
    f = await make_frontier(conn)
    await put(conn, f.principal, DAY, load(f, DAY))
    worker = VeeWorker(db_url, **kw)  # type: ignore[arg-type]
    await worker.start()
    cpus = sorted(os.sched_getaffinity(0))
    try:
        summary = await worker.run_day(DAY, f.code, now=NOW)
        assert summary.written == 24
        assert worker.pid is not None
        backend = await _backend(db_url, "cgm vee")
        yield worker.pid, backend, set(cpus[1:]) if len(cpus) > 1 else set(cpus)
    finally:
        await worker.stop()


async def test_the_vee_process_and_its_backend_run_at_low_priority_by_default(
    db_url: str, conn
) -> None:
    assert Settings.model_fields["vee_priority"].default == "low"  # whatever the env says
    # The defaults: nice +10, the first CPU kept for the service.
    async with _worker_after_a_day(db_url, conn) as (pid, backend, vee_cpus):
        assert os.sched_getscheduler(pid) == os.SCHED_OTHER
        assert _nice(pid) == min(19, _nice(0) + priority.LOW_NICE)
        for tid in os.listdir(f"/proc/{pid}/task"):  # its threads too
            assert _nice(int(tid)) == _nice(pid)
        assert os.sched_getaffinity(pid) == vee_cpus
        server = _parent(backend)  # the server's main process: the backends' own nice
        if _may_reprioritise(backend):
            assert _nice(backend) == min(19, _nice(server) + priority.LOW_NICE)
            assert os.sched_getaffinity(backend) == vee_cpus
        else:  # left as it was (and the log says why)
            assert _nice(backend) == _nice(server)


async def test_the_vee_process_and_its_backend_run_at_idle_priority(db_url: str, conn) -> None:
    async with _worker_after_a_day(db_url, conn, priority="idle") as (pid, backend, vee_cpus):
        assert os.sched_getscheduler(pid) == os.SCHED_IDLE
        assert os.sched_getaffinity(pid) == vee_cpus
        if _may_reprioritise(backend):
            assert os.sched_getscheduler(backend) == os.SCHED_IDLE
            assert os.sched_getaffinity(backend) == vee_cpus
        else:  # left as it was (and the log says why)
            assert os.sched_getscheduler(backend) == os.SCHED_OTHER


async def test_normal_priority_leaves_process_and_backend_alone(db_url: str, conn) -> None:
    worker = VeeWorker(db_url, priority="normal", reserve_cpus=0)
    await worker.start()
    try:
        await worker.run_pairs([])
        assert os.sched_getscheduler(worker.pid) == os.SCHED_OTHER
        assert os.getpriority(os.PRIO_PROCESS, worker.pid) == os.getpriority(os.PRIO_PROCESS, 0)
        assert os.sched_getaffinity(worker.pid) == os.sched_getaffinity(0)
        backend = await _backend(db_url, "cgm vee")
        assert os.sched_getscheduler(backend) == os.SCHED_OTHER
    finally:
        await worker.stop()


async def test_a_large_runs_extra_connections_follow(db_url: str, conn, monkeypatch) -> None:
    """The history reader and the split writers of a large run get the process's policy
    (here set for the test only: the test process itself stays as it is)."""
    ours = os.sched_getaffinity(0)
    last = max(ours)
    monkeypatch.setattr(priority, "_applied", "idle")
    monkeypatch.setattr(priority, "_cpus", frozenset({last}))
    async with await vee_run._connect_like(conn, "cgm vee write") as other:
        backend = other.pgconn.backend_pid
        if _may_reprioritise(backend):
            assert os.sched_getscheduler(backend) == os.SCHED_IDLE
            assert os.sched_getaffinity(backend) == {last}
        else:
            assert os.sched_getscheduler(backend) == os.SCHED_OTHER
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    assert os.sched_getaffinity(0) == ours


async def test_no_other_process_is_taken_for_our_backend(db_url: str, conn) -> None:
    """Only the backend the server names for this connection is ever reprioritised: not
    this process, not the server's main process; over TCP not even another connection's
    backend (its title names another port)."""
    mine = conn.pgconn
    assert priority._is_our_backend(mine.backend_pid, mine.socket)
    assert not priority._is_our_backend(os.getpid(), mine.socket)  # not a backend at all
    stat = Path(f"/proc/{mine.backend_pid}/stat").read_text()  # noqa: ASYNC240
    server = int(stat.rsplit(")", 1)[1].split()[1])  # its parent: the server's main process
    assert not priority._is_our_backend(server, mine.socket)
    async with await psycopg.AsyncConnection.connect(db_url) as other:
        theirs = other.pgconn.backend_pid
        with socket.socket(fileno=os.dup(mine.socket)) as s:
            tcp = s.family != socket.AF_UNIX
        # Over a Unix socket the server itself vouches for the pid it gives (same PID
        # namespace), so another backend of that server is one the check cannot tell apart.
        assert priority._is_our_backend(theirs, mine.socket) is not tcp


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown priority policy"):
        priority.lower_process("lowest")  # type: ignore[arg-type]


async def test_a_backend_that_cannot_be_moved_is_left_as_it_is_and_logged(
    db_url: str, conn, monkeypatch, caplog
) -> None:
    """A refusal (here CPUs that do not exist; elsewhere another user's backend) leaves the
    backend as it was, says so in the log once, and the run goes on."""
    monkeypatch.setattr(priority, "_applied", "normal")
    monkeypatch.setattr(priority, "_cpus", frozenset({4095}))
    monkeypatch.setattr(priority, "_warned", False)
    async with await psycopg.AsyncConnection.connect(db_url) as other:
        backend = other.pgconn.backend_pid
        before = os.sched_getaffinity(backend)
        with caplog.at_level("INFO", logger="cgm.vee.priority"):
            assert priority.follow(other) is False
            assert priority.follow(conn) is False
        assert os.sched_getaffinity(backend) == before
        assert (await (await other.execute("SELECT 1")).fetchone()) == (1,)
    notes = [m for r in caplog.records if "keep their CPU priority" in (m := r.getMessage())]
    assert len(notes) == 1 and f"process {backend}" in notes[0]
