"""Foreground work that background jobs step aside for: a collection cycle in flight.

Why: on a small host a fleet's first settle (VEE, in its own process at the lowest CPU
priority) still shares the database server, its WAL and the disk with the collector. During
one, the collector ran at half its throughput whatever the CPU policy (benchmarks/README.md,
"VEE's CPU priority on a slower host"). Collection is the time-bound job (a meter keeps a
limited memory, a cycle has its period); settling can wait. So the collector marks its
cycles with :func:`running`, and a background process, between two steps of its work,
waits while one is running (:meth:`Watcher.step_aside`, up to a bound, so that it always
gets on).

The mark is a counter in a small file that both processes map into memory: reading it at
every step costs a memory load, with no lock and no message. The service's side
(:func:`share`) writes every change of the counter into each shared file; the background
process inherits its descriptor and opens it with :class:`Watcher`. The file is removed as
soon as it is made, so nothing is left behind however the processes end. Not
``multiprocessing.shared_memory``: in Python 3.11 a process that attaches to a segment
registers it with its resource tracker, which unlinks it when that process ends (``track``
came in 3.13), and a named segment outlives a killed service.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import struct
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

_COUNT = struct.Struct("<q")
_running = 0
_pages: dict[int, mmap.mmap] = {}


@contextmanager
def running() -> Iterator[None]:
    """Mark foreground work in flight in this process for as long as the block runs
    (blocks may nest and overlap: the mark is a count)."""
    global _running
    _running += 1
    _publish()
    try:
        yield
    finally:
        _running -= 1
        _publish()


def busy() -> int:
    """Foreground blocks running now in this process."""
    return _running


def share() -> int:
    """A new page that mirrors this process's count from now on: an open descriptor of a
    file already removed, for a child process to inherit (``pass_fds``) and open with
    :class:`Watcher`. :func:`unshare` closes it."""
    try:  # memory-backed where there is one; the temporary directory otherwise
        fd, name = tempfile.mkstemp(prefix="cgm-foreground-", dir="/dev/shm")
    except OSError:
        fd, name = tempfile.mkstemp(prefix="cgm-foreground-")
    try:
        os.unlink(name)
        os.ftruncate(fd, _COUNT.size)
        page = mmap.mmap(fd, _COUNT.size)
    except BaseException:
        os.close(fd)
        raise
    _pages[fd] = page
    _publish()
    return fd


def unshare(fd: int) -> None:
    page = _pages.pop(fd, None)
    if page is not None:
        page.close()
        os.close(fd)


def _publish() -> None:
    for page in _pages.values():
        _COUNT.pack_into(page, 0, _running)


class Watcher:
    """The background side: whether foreground work is running in the process that shared
    descriptor ``fd`` (:func:`share`), and a wait for it to end."""

    def __init__(self, fd: int, poll: float = 0.02) -> None:
        self._page = mmap.mmap(fd, _COUNT.size, access=mmap.ACCESS_READ)
        self.poll = poll

    def busy(self) -> bool:
        return _COUNT.unpack_from(self._page, 0)[0] > 0

    async def step_aside(self, max_wait: float) -> float:
        """Wait while foreground work runs, at most ``max_wait`` s; the seconds waited."""
        if not self.busy():
            return 0.0
        t0 = time.monotonic()
        # Another process's memory: nothing to await but time.
        while self.busy() and time.monotonic() - t0 < max_wait:  # noqa: ASYNC110
            await asyncio.sleep(self.poll)
        return time.monotonic() - t0

    def close(self) -> None:
        self._page.close()
