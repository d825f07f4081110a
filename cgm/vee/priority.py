"""CPU priority of settling: the VEE process, and the database backends it works through,
yield the CPU to the service's API and collector.

A first settle of a large fleet is seconds of CPU in this process and more in the database
server (index upkeep of ~1 M inserted rows). Lowering only this process (nice) left its
backends at the priority of the API's, and the API's p99 at 2–3× idle on a 2-core host
(benchmarks/README.md, "the service under a VEE run"). Even at the lowest priority, work
on every core doubled it there: a request that wakes on a core VEE has just used finds its
caches cold. So a lowered VEE process, and the backend of every connection it opens:

- run at ``policy`` (``Settings.vee_priority``):
  - ``low`` (the default): nice +10 (backends: +10 from their own).
  - ``idle``: Linux ``SCHED_IDLE``: only CPU time the service leaves. Where the OS has no
    such policy, ``low``. Not the default: the scheduler counts a core that runs only
    ``SCHED_IDLE`` work as idle and wakes the service's tasks there, behind VEE's work in
    the kernel (on one host the API's p99 during a first settle was 4–5× idle at ``idle``,
    2.3–2.5× at ``low``), and a service that keeps the cores busy for hours (a long
    catch-up) would leave VEE none.
  - ``normal``: unchanged.
- keep off the first ``reserve_cpus`` CPUs they may use (``Settings.vee_reserve_cpus``,
  default 1; at least one CPU is always left to VEE), which stay the service's alone.

A backend is touched only when it is provably this connection's: over TCP its process
title (PostgreSQL's ``postgres: user db host(port) ...``) names this socket's own port; over
a Unix socket the server the kernel names as the socket's peer runs in this PID namespace
and the backend is its child. So a database in a container (another PID namespace) or on
another host is never mistaken for a local process. Where the backend belongs to another
user and this process lacks the right (``CAP_SYS_NICE``), it keeps its priority and CPUs,
and the log says so once.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from pathlib import Path
from typing import Literal

import psycopg

log = logging.getLogger(__name__)

Policy = Literal["idle", "low", "normal"]
POLICIES: tuple[Policy, ...] = ("idle", "low", "normal")
LOW_NICE = 10

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_applied: Policy = "normal"  # what this process runs at: its backends follow
_cpus: frozenset[int] | None = None  # the CPUs this process keeps to (None: any)
_warned = False


def lower_process(policy: Policy, reserve_cpus: int = 0) -> Policy:
    """Put every thread of this process at ``policy``, and off the first ``reserve_cpus``
    of the CPUs it may use (at least one is left to it); returns the policy in effect
    (``idle`` falls back to ``low`` where the OS lacks it)."""
    global _applied, _cpus
    if policy not in POLICIES:
        raise ValueError(f"unknown priority policy {policy!r}; one of {', '.join(POLICIES)}")
    if reserve_cpus < 0:
        raise ValueError("reserve_cpus must be >= 0")
    tids = _threads()
    if policy == "idle" and _set_idle(tids):
        _applied = "idle"
    elif policy != "normal":
        for tid in tids:  # per thread on Linux; threads started later inherit it
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + LOW_NICE)
        _applied = "low"
    if reserve_cpus and hasattr(os, "sched_getaffinity"):
        allowed = sorted(os.sched_getaffinity(0))
        if len(allowed) > 1:
            _cpus = frozenset(allowed[min(reserve_cpus, len(allowed) - 1) :])
            for tid in tids:
                os.sched_setaffinity(tid, _cpus)
    log.info(
        "VEE process at CPU priority %s, on CPUs %s",
        _applied,
        "any" if _cpus is None else ",".join(map(str, sorted(_cpus))),
    )
    return _applied


def follow(conn: psycopg.AsyncConnection | psycopg.Connection) -> bool:
    """Give ``conn``'s backend this process's policy and CPUs; True when it was changed."""
    if _applied == "normal" and _cpus is None:
        return False
    pid = conn.pgconn.backend_pid
    if not _is_our_backend(pid, conn.pgconn.socket):
        return False
    try:
        if _applied == "idle":
            _set_idle([pid])
        elif _applied == "low":
            os.setpriority(os.PRIO_PROCESS, pid, os.getpriority(os.PRIO_PROCESS, pid) + LOW_NICE)
        if _cpus is not None:
            os.sched_setaffinity(pid, _cpus)
    except ProcessLookupError:
        return False  # the backend ended meanwhile
    except OSError as exc:  # no right to (another user), or CPUs outside its own cpuset
        _warn_once(pid, exc)
        return False
    return True


def _threads() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


def _set_idle(tids: list[int]) -> bool:
    if not hasattr(os, "SCHED_IDLE"):
        return False
    for tid in tids:
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
    return True


def _is_our_backend(pid: int, fd: int) -> bool:
    """Whether ``pid``, which the server gave as the backend of the connection on socket
    ``fd``, names that backend among this host's processes.

    TCP: the process's title names this socket's own port. Unix socket: the kernel names
    the server listening on it (``SO_PEERCRED``); it runs in this PID namespace (so the
    server's pid numbers are ours) and ``pid`` is its child."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, UnicodeDecodeError):
        return False  # not a process of this host (or one we may not see)
    if not title.startswith("postgres"):
        return False
    with socket.socket(fileno=os.dup(fd)) as s:
        if s.family in (socket.AF_INET, socket.AF_INET6):
            return f"({s.getsockname()[1]})" in title
        if s.family != getattr(socket, "AF_UNIX", None) or not hasattr(socket, "SO_PEERCRED"):
            return False
        cred = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    server, _, _ = _UCRED.unpack(cred)
    try:
        parent = int(stat.rsplit(")", 1)[1].split()[1])  # after "pid (comm)": state, ppid
        same_namespace = os.readlink(f"/proc/{server}/ns/pid") == os.readlink("/proc/self/ns/pid")
    except (OSError, ValueError, IndexError):
        return False
    return server > 0 and parent == server and same_namespace


def _warn_once(pid: int, exc: OSError) -> None:
    global _warned
    if not _warned:
        _warned = True
        log.info(
            "VEE's database backends keep their CPU priority and CPUs: process %d: %s (to "
            "change them, run PostgreSQL as the service's user or give the service "
            "CAP_SYS_NICE, with the same CPUs)",
            pid,
            exc.strerror or exc,
        )
