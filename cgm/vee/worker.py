"""VEE in its own process, away from the service's event loop.

A run over a large fleet loads millions of rows and does seconds of numpy work. On a thread
of the service's process it still shares the GIL with the loop that serves the API and
drives the collector: stretches of numpy that hold the GIL stalled the API (p99 17× idle,
benchmarks/README.md). So the worker is a child process (``python -m cgm.vee.worker``) with
its own interpreter and database connection. The service sends it jobs by name (settle what
a cycle read, a day, a list of frontier-days) over a pipe and awaits the answer; runs are
done one at a time, in the order given, so two runs never settle the same day at once.

- Errors come back as :class:`VeeWorkerError` (the child's exception type, message and
  traceback) and the child goes on with the next job; a child that dies is replaced for the
  next job.
- No orphan: :meth:`VeeWorker.stop` closes the pipe (the child ends after its current run),
  waits, then terminates it; a child whose parent disappears ends itself within a second.
- Priority: the child and its database backends run at a lower CPU priority than the
  service and off the host's first CPU (``Settings.vee_priority``, default nice +10,
  and ``vee_reserve_cpus``; :mod:`cgm.vee.priority`), so the API and the collector keep a
  core of their own and are served first on the other.
- Metrics: the child's VEE metrics (values written, rule flags, run duration, estimated
  hours, alarms) are sent back with each answer and mirrored into the parent's registry,
  which is the one ``/metrics`` serves.

Frames on the pipe: 4-byte big-endian length + pickle. Only the parent and its own child
talk over it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import struct
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from cgm.vee import priority as cpu
from cgm.vee.config import VeeConfig

log = logging.getLogger(__name__)

_LEN = struct.Struct(">I")
# Metrics of cgm.metrics set by a run, mirrored from the child: name -> kind.
_MIRRORED = {
    "VEE_VALUES_WRITTEN": "counter",
    "VEE_FLAGS": "counter",
    "VEE_PROLONGED_ALARMS": "counter",
    "VEE_RUN_SECONDS": "gauge",
    "VEE_ESTIMATED_HOURS": "gauge",
}


class VeeWorkerError(RuntimeError):
    """A job failed in the VEE process: ``kind`` is the exception's type name there."""

    def __init__(self, kind: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{kind}: {message}")
        self.kind, self.message, self.remote_traceback = kind, message, remote_traceback


class VeeWorker:
    """One child process for VEE runs, fed jobs in order from the service's loop."""

    def __init__(
        self,
        db_url: str,
        config: VeeConfig | None = None,
        priority: cpu.Policy = "low",
        reserve_cpus: int = 1,
    ) -> None:
        self.db_url = db_url
        self.config = config or VeeConfig()
        self.priority, self.reserve_cpus = priority, reserve_cpus
        self._proc: asyncio.subprocess.Process | None = None
        self._lock: asyncio.Lock | None = None
        self._pending: set[asyncio.Task] = set()
        self._seen: dict[tuple[str, tuple], float] = {}  # the child's metrics last mirrored
        self._started = False

    @property
    def pid(self) -> int | None:
        """The VEE process's id (None when none is running)."""
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    async def start(self) -> None:
        """Start the process now (imports and connection cost paid before the first cycle)."""
        self._started = True
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            await self._ensure()

    def after_collection(self, cycle: datetime, now: datetime | None = None) -> asyncio.Task:
        """Settle the days collection cycle ``cycle`` stored readings for."""
        return self.submit("vee_after_collection", cycle, now=now)

    def run_day(
        self, day: date, frontier: str | int | None = None, now: datetime | None = None
    ) -> asyncio.Task:
        return self.submit("run_vee", day, frontier, now=now)

    def run_pairs(
        self, pairs: Sequence[tuple[str | int, date]], now: datetime | None = None
    ) -> asyncio.Task:
        return self.submit("run_vee_pairs", list(pairs), now=now)

    def submit(self, job: str, *args: Any, now: datetime | None = None) -> asyncio.Task:
        """Queue ``cgm.vee.run.<job>(conn, *args, config=..., now=now)`` in the process,
        after the jobs already given; the task's result is the run's ``VeeSummary``."""
        if not self._started:
            raise RuntimeError("VeeWorker not started")
        if job not in _JOBS:
            raise ValueError(f"unknown VEE job {job!r}")
        task = asyncio.ensure_future(self._serial((job, args, now)))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    async def _serial(self, request: tuple) -> Any:
        assert self._lock is not None
        async with self._lock:
            proc = await self._ensure()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                _send(proc.stdin, request)
                await proc.stdin.drain()
                ok, payload, samples = await _receive(proc.stdout)
            except (asyncio.IncompleteReadError, ConnectionError, BrokenPipeError) as exc:
                code = await _reap(proc, 5.0)
                raise VeeWorkerError(
                    "ProcessExited", f"the VEE process ended during the run (exit code {code})"
                ) from exc
            except asyncio.CancelledError:
                # The answer would come out of step with the next request: end this child.
                await _end(proc, 0.0)
                raise
            self._mirror(samples)
            if not ok:
                raise VeeWorkerError(*payload)
            return payload

    async def _ensure(self) -> asyncio.subprocess.Process:
        if self._proc is not None and self._proc.returncode is None:
            return self._proc
        if self._proc is not None:
            log.warning("VEE process %d had ended (code %s); starting a new one",
                        self._proc.pid, self._proc.returncode)  # fmt: skip
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cgm.vee.worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self._seen = {}  # a new process counts from zero
        assert self._proc.stdin is not None
        _send(
            self._proc.stdin,
            (self.db_url, self.config, self.priority, self.reserve_cpus, os.getpid()),
        )
        await self._proc.stdin.drain()
        log.info("VEE process %d started", self._proc.pid)
        return self._proc

    def _mirror(self, samples: dict[tuple[str, tuple], float]) -> None:
        """Apply the child's cumulative metric values to this process's metrics."""
        from cgm import metrics

        for key, value in samples.items():
            name, labels = key
            metric = getattr(metrics, name)
            target = metric.labels(*labels) if labels else metric
            if _MIRRORED[name] == "counter":
                delta = value - self._seen.get(key, 0.0)
                if delta > 0:
                    target.inc(delta)
            else:
                target.set(value)
        for key in set(self._seen) - set(samples):
            name, labels = key
            if _MIRRORED[name] == "gauge" and labels:
                try:
                    getattr(metrics, name).remove(*labels)
                except KeyError:
                    pass
        self._seen = dict(samples)

    async def stop(self, timeout: float = 60.0) -> None:
        """Let the jobs already given finish (up to ``timeout`` s), then end the process."""
        if self._pending:
            _, late = await asyncio.wait(list(self._pending), timeout=timeout)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        if self._proc is not None:
            await _end(self._proc, timeout)
            self._proc = None
        self._started = False


async def _end(proc: asyncio.subprocess.Process, timeout: float) -> None:
    """Close the child's input (it ends after its current job); terminate it if it lingers."""
    if proc.returncode is None and proc.stdin is not None:
        proc.stdin.close()
    if await _reap(proc, timeout) is None:
        proc.terminate()
        if await _reap(proc, 5.0) is None:
            proc.kill()
            await proc.wait()
    log.info("VEE process %d ended (code %s)", proc.pid, proc.returncode)


async def _reap(proc: asyncio.subprocess.Process, timeout: float) -> int | None:
    try:
        return await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        return None


def _send(stream: Any, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LEN.pack(len(data)) + data)


async def _receive(stream: asyncio.StreamReader) -> Any:
    (n,) = _LEN.unpack(await stream.readexactly(_LEN.size))
    return pickle.loads(await stream.readexactly(n))  # noqa: S301 - our own child's frames


def log_summary(fut: asyncio.Future) -> None:
    """Done-callback for a run nobody awaits: its outcome goes to the log."""
    if fut.cancelled():
        return
    exc = fut.exception()
    if exc is not None:
        detail = getattr(exc, "remote_traceback", "")
        log.error("VEE run failed: %s%s", exc, f"\n{detail}" if detail else "")
        return
    s = fut.result()
    log.info(
        "VEE %s: %d values, %d written, %d estimated, %d unsettled in %.1f s",
        ", ".join(d.isoformat() for d in s.days) or "(nothing to settle)",
        s.values,
        s.written,
        s.by_source.get("estimate", 0),
        s.unsettled,
        s.seconds,
    )


# --- the child ------------------------------------------------------------------------

_JOBS = ("vee_after_collection", "run_vee", "run_vee_pairs")


def _metric_samples() -> dict[tuple[str, tuple], float]:
    from cgm import metrics

    out: dict[tuple[str, tuple], float] = {}
    for name in _MIRRORED:
        metric = getattr(metrics, name)
        for family in metric.collect():
            for s in family.samples:
                if s.name.endswith("_created"):
                    continue
                labels = tuple(s.labels.values())  # in the metric's label order
                out[(name, labels)] = s.value
    return out


def _watch_parent(parent: int) -> None:
    """End this process when the service that started it is gone (even killed -9)."""
    while True:
        if os.getppid() != parent:
            os._exit(3)
        time.sleep(0.5)


def _child() -> None:
    # Ctrl-C at a terminal signals the whole process group, this process too: the service
    # stops it itself (the pipe closes after the run in hand), so SIGINT is not for it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Frames go on the original stdout; anything else printed goes to stderr (the log).
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = sys.stdin.buffer
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s cgm-vee[{os.getpid()}] %(name)s: %(message)s",
    )

    def read() -> Any:
        head = inp.read(_LEN.size)
        if len(head) < _LEN.size:
            return None  # the parent closed the pipe: done
        (n,) = _LEN.unpack(head)
        return pickle.loads(inp.read(n))  # noqa: S301 - frames from our parent

    first = read()
    if first is None:
        return
    db_url, config, policy, reserve_cpus, parent = first
    # Settling is batch work: the service's API and collector come first for the CPU.
    cpu.lower_process(policy, reserve_cpus)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    asyncio.run(_serve(db_url, config, read, out))


async def _serve(db_url: str, config: VeeConfig, read: Any, out: Any) -> None:
    import psycopg

    from cgm.vee import run as vee_run

    conn: psycopg.AsyncConnection | None = None
    try:
        while True:
            request = await asyncio.to_thread(read)
            if request is None:
                return
            job, args, now = request
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = await psycopg.AsyncConnection.connect(db_url, application_name="cgm vee")
                    cpu.follow(conn)
                result = await getattr(vee_run, job)(conn, *args, config=config, now=now)
                answer: tuple = (True, result)
            except Exception as exc:  # reported to the parent, which logs it
                if conn is not None and not conn.closed:
                    try:
                        await conn.rollback()
                    except psycopg.Error:
                        await conn.close()
                answer = (False, (type(exc).__name__, str(exc), traceback.format_exc()))
            _send(out, (*answer, _metric_samples()))
            out.flush()
    finally:
        if conn is not None:
            await conn.close()


if __name__ == "__main__":
    _child()
