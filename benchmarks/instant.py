"""A driver that answers at once, in process, to measure the collection engine alone.

``benchmarks/collect.py --driver instant`` runs the real cycle (claims, sessions, writer,
PostgreSQL) with this driver in place of the protocol drivers, so the collector's CPU per
session is the engine's own: claiming, scheduling, the session sequence, screening and
storing. The protocol drivers' share is what ``--driver real`` adds on top. Never used
outside benchmarks: tests talk to simulators over real sockets.
"""

from __future__ import annotations

import contextvars
from datetime import datetime, timedelta
from typing import Any

from cgm.collection.engine import Collector
from drivers.base import (
    ALL_CHANNELS,
    ClockReading,
    Credentials,
    Driver,
    Endpoint,
    MeterIdentity,
    MeterSession,
    ProfileConfig,
    ProfileEntry,
    RegisterValue,
    utcnow,
)

HOUR = timedelta(hours=1)
_serial: contextvars.ContextVar[str] = contextvars.ContextVar("serial")


class InstantSession(MeterSession):
    """Hourly entries of four channels for any range, registers, and an exact clock."""

    def __init__(self, endpoint: Endpoint, credentials: Credentials, serial: str) -> None:
        super().__init__(endpoint, credentials, timeout=30.0)
        self.serial = serial

    async def _identify(self) -> MeterIdentity:
        return MeterIdentity(self.serial, "bench", "instant", "1")

    async def _read_clock(self) -> ClockReading:
        now = utcnow()
        return ClockReading(now, now, now)

    async def _set_clock(self, when: datetime) -> None:
        return None

    async def _read_profile_config(self) -> ProfileConfig:
        return ProfileConfig(HOUR, 24 * 40, ALL_CHANNELS)

    async def _read_profile(self, start: datetime, end: datetime) -> list[ProfileEntry]:
        out = []
        t = start
        while t < end:
            h = t.hour
            out.append(
                ProfileEntry(t, HOUR, {ch: 0.5 + 0.01 * h + i for i, ch in enumerate(ALL_CHANNELS)})
            )
            t += HOUR
        return out

    async def _read_registers(self) -> list[RegisterValue]:
        now = utcnow()
        return [RegisterValue(ch, 1000.0 + i, "kWh", now) for i, ch in enumerate(ALL_CHANNELS)]

    async def _close(self) -> None:
        return None


class InstantDriver(Driver):
    async def connect(
        self,
        endpoint: Endpoint,
        credentials: Credentials,
        params: dict[str, Any],
        *,
        timeout: float,
    ) -> MeterSession:
        return InstantSession(endpoint, credentials, _serial.get())


class InstantCollector(Collector):
    """The engine with every protocol answered by :class:`InstantDriver`."""

    _instant = InstantDriver()

    def _driver(self, protocol: str) -> Driver:
        return self._instant

    async def _one(self, target, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        _serial.set(target.serial)  # the session task's own context
        await super()._one(target, *args, **kwargs)
