"""Python's cyclic garbage collector paced for a collection cycle.

A cycle loads the fleet (three or four long-lived objects per meter) and keeps hundreds of
sessions in flight; with the default young-generation threshold (700 net allocations) the
collector ran every few sessions, promoted the in-flight sessions' objects, and so ran full
collections that walk everything alive (the registry, the per-meter metrics): 28 % of the
collector's CPU at 50,000 meters (benchmarks/README.md). Almost all of a cycle's garbage is
freed by reference counting; what is cyclic is a few objects per session. So during a cycle
the young threshold is raised: collections still run (cyclic garbage is still freed, after
at most ``YOUNG`` net allocations, a few MB), far less often, and the defaults come back when
the last cycle running in the process ends (nothing is kept or frozen across cycles).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

YOUNG = 50_000  # net container allocations between young collections during a cycle

_lock = threading.Lock()
_running = 0
_saved: tuple[int, ...] = ()


@contextmanager
def cycle_pace() -> Iterator[None]:
    """Raise the young threshold while at least one cycle runs (cycles may overlap: an
    on-demand run during the scheduled one); restore the process's own afterwards."""
    global _running, _saved
    with _lock:
        if _running == 0:
            _saved = gc.get_threshold()
            if _saved[0]:  # 0: the collector is disabled; leave it so
                gc.set_threshold(max(YOUNG, _saved[0]), *_saved[1:])
        _running += 1
    try:
        yield
    finally:
        with _lock:
            _running -= 1
            if _running == 0:
                gc.set_threshold(*_saved)
