"""The driver contract every protocol inherits from ``MeterSession``: a call that does not
answer within the session's timeout is a ``MeterTimeout`` (per call, not per session), and a
session never runs two calls at once. A session whose calls wait as long as the test says;
no protocol is involved, so none is imitated."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from drivers.base import (
    ClockReading,
    Credentials,
    Endpoint,
    MeterIdentity,
    MeterSession,
    MeterTimeout,
    ProfileConfig,
    ProfileEntry,
    RegisterValue,
)


class WaitingSession(MeterSession):
    """Each call waits ``delay`` seconds, and records how many calls overlap."""

    def __init__(self, timeout: float, delay: float) -> None:
        super().__init__(Endpoint("127.0.0.1", 1), Credentials(1, "x"), timeout)
        self.delay = delay
        self.running = 0
        self.most = 0
        self.order: list[str] = []
        self.closed = False

    async def _step(self, name: str) -> None:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(self.delay)
            self.order.append(name)
        finally:
            self.running -= 1

    async def _identify(self) -> MeterIdentity:
        await self._step("identify")
        return MeterIdentity("S", "", "", "")

    async def _read_clock(self) -> ClockReading:
        await self._step("clock")
        now = datetime.now(UTC)
        return ClockReading(now, now, now)

    async def _set_clock(self, when: datetime) -> None:
        await self._step("set")

    async def _read_profile_config(self) -> ProfileConfig:
        raise NotImplementedError

    async def _read_profile(self, start: datetime, end: datetime) -> list[ProfileEntry]:
        raise NotImplementedError

    async def _read_registers(self) -> list[RegisterValue]:
        raise NotImplementedError

    async def _close(self) -> None:
        await self._step("close")
        self.closed = True


async def test_a_call_without_answer_times_out_and_the_session_stays_usable() -> None:
    s = WaitingSession(timeout=0.05, delay=5.0)
    with pytest.raises(MeterTimeout) as info:
        await s.identify()
    assert info.value.reason == "timeout" and "identify" in str(info.value)
    s.delay = 0.0
    assert (await s.identify()).serial == "S"  # the expired deadline does not linger
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_the_timeout_is_per_call_not_per_session() -> None:
    s = WaitingSession(timeout=0.2, delay=0.08)
    for _ in range(5):  # 0.4 s in all, each call well inside its 0.2 s
        await s.read_clock()
    assert s.order == ["clock"] * 5


async def test_a_hanging_call_after_quick_ones_times_out() -> None:
    s = WaitingSession(timeout=0.1, delay=0.0)
    await s.identify()
    await asyncio.sleep(0.15)  # the first call's deadline passes while idle
    await s.identify()
    s.delay = 5.0
    with pytest.raises(MeterTimeout):
        await s.read_clock()


async def test_calls_from_several_tasks_never_overlap() -> None:
    s = WaitingSession(timeout=1.0, delay=0.01)
    await asyncio.gather(s.identify(), s.read_clock(), s.set_clock(datetime.now(UTC)), s.close())
    assert s.most == 1
    assert s.order == ["identify", "clock", "set", "close"] and s.closed


async def test_the_callers_own_cancellation_is_not_a_meter_timeout() -> None:
    s = WaitingSession(timeout=5.0, delay=5.0)
    with pytest.raises(TimeoutError):  # the caller's deadline, not the meter's
        async with asyncio.timeout(0.05):
            await s.identify()
    s.delay = 0.0
    await s.identify()  # and the session is free again


async def test_close_waits_for_the_running_call() -> None:
    s = WaitingSession(timeout=1.0, delay=0.05)
    call = asyncio.create_task(s.identify())
    await asyncio.sleep(0)
    await s.close()
    assert s.order == ["identify", "close"] and (await call).serial == "S"
