"""Where a VEE run steps aside for a collection cycle (cgm.foreground).

A run calls :func:`step_aside` between its steps (and its large write between chunks); in
the VEE process of the service it waits there while the service's collector is in a cycle,
at most ``max_wait`` seconds each time, so a long run never starves. Anywhere else (a run in
the caller's own process: tests, ``cgm vee``) it returns at once.
"""

from __future__ import annotations

from cgm import metrics
from cgm.foreground import Watcher

_watcher: Watcher | None = None
_max_wait = 0.0


def configure(watcher: Watcher | None, max_wait: float) -> None:
    """Step aside for the foreground work ``watcher`` sees (None, or ``max_wait`` 0: never)."""
    global _watcher, _max_wait
    _watcher, _max_wait = watcher, max_wait


async def step_aside() -> None:
    if _watcher is None or _max_wait <= 0:
        return
    waited = await _watcher.step_aside(_max_wait)
    if waited:
        metrics.VEE_YIELD_SECONDS.inc(waited)
