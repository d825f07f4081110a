"""Login throttling per client and per (client, user): a delay, never a lock-out.

Locking an account after failed logins hands anyone who knows a user name a way to keep
that user out. Here failures slow down only whoever makes them: after a few free
failures, a (client, user) pair — and, with a larger allowance, a client as a whole —
must wait before its next attempt, the wait doubling with each further failure up to a
ceiling. The real user, from their own address, is not affected. A success clears the
pair. State is in process memory, bounded in size, and forgotten after a quiet period.

A client waiting out its delay is answered at once, without a password check or a
database query, so a flood costs the service almost nothing.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class _Entry:
    failures: int = 0
    blocked_until: float = 0.0
    last: float = 0.0


@dataclass(frozen=True)
class ThrottlePolicy:
    pair_free: int = 3  # failures of one user from one client before delays start
    client_free: int = 20  # failures from one client (any user names) before delays start
    base_s: float = 1.0  # first delay; doubles with each further failure
    max_s: float = 60.0  # ceiling of one delay
    forget_s: float = 900.0  # a quiet key is forgotten after this long
    max_keys: int = 10_000  # oldest keys are dropped beyond this (bounded memory)


class LoginThrottle:
    def __init__(self, policy: ThrottlePolicy | None = None) -> None:
        self.policy = policy or ThrottlePolicy()
        self._entries: OrderedDict[tuple[str, str | None], _Entry] = OrderedDict()

    def wait(self, client: str, username: str | None, now: float | None = None) -> float:
        """Seconds this client must still wait before trying ``username`` (0: go ahead)."""
        now = time.monotonic() if now is None else now
        keys = [(client, None)] + ([(client, username)] if username is not None else [])
        left = 0.0
        for key in keys:
            entry = self._entries.get(key)
            if entry is not None:
                left = max(left, entry.blocked_until - now)
        return left

    def failed(self, client: str, username: str | None, now: float | None = None) -> float:
        """Count a failure; returns the delay it imposes (0 while within the allowance)."""
        now = time.monotonic() if now is None else now
        self._expire(now)
        p = self.policy
        delay = 0.0
        keys = [((client, None), p.client_free)]
        if username is not None:
            keys.append(((client, username), p.pair_free))
        for key, free in keys:
            entry = self._entries.pop(key, None) or _Entry()
            entry.failures += 1
            entry.last = now
            if entry.failures > free:
                d = min(p.base_s * 2 ** (entry.failures - free - 1), p.max_s)
                entry.blocked_until = now + d
                delay = max(delay, d)
            self._entries[key] = entry
        while len(self._entries) > p.max_keys:
            self._entries.popitem(last=False)
        return delay

    def succeeded(self, client: str, username: str) -> None:
        self._entries.pop((client, username), None)

    def _expire(self, now: float) -> None:
        forget = self.policy.forget_s
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if now - entry.last < forget:
                break
            del self._entries[key]
