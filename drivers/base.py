"""The one interface every meter driver implements.

Modelled on OpenMUC's driver contract: one session is one connection to one meter, and a
session never runs two calls at once (the base class serialises them). A read that fails
raises a :class:`DriverError` subclass carrying a machine-readable ``reason``; a driver never
returns a made-up value (a zero, a stale cache) in place of a reading.

Everything here is protocol-neutral and database-free: ``drivers/`` imports nothing from
``cgm/``.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntEnum, StrEnum
from typing import Any, Self, TypeVar

T = TypeVar("T")


class Channel(StrEnum):
    """The four energy channels the Código de Medida asks for."""

    ACTIVE_IMPORT = "active_import"  # kWh,   OBIS 1.0.1.8.0.255
    ACTIVE_EXPORT = "active_export"  # kWh,   OBIS 1.0.2.8.0.255
    REACTIVE_IMPORT = "reactive_import"  # kvarh, OBIS 1.0.3.8.0.255
    REACTIVE_EXPORT = "reactive_export"  # kvarh, OBIS 1.0.4.8.0.255

    @property
    def unit(self) -> str:
        return "kWh" if self in (Channel.ACTIVE_IMPORT, Channel.ACTIVE_EXPORT) else "kvarh"


ALL_CHANNELS: tuple[Channel, ...] = tuple(Channel)


class AccessLevel(IntEnum):
    """Art. 17 access levels: 1 reads, 2 also sets clock, parameters, calibration."""

    READ = 1
    CONFIGURE = 2


@dataclass(frozen=True)
class Credentials:
    """What a client presents to a meter. ``secret`` never appears in ``repr`` or logs."""

    level: AccessLevel
    secret: str = field(repr=False)
    # Protocol-specific client identity: DLMS client SAP, MQTT username, ... (optional).
    client: str | None = None


@dataclass(frozen=True)
class Endpoint:
    """A communication channel to a meter (a meter may have a primary and a backup)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class MeterIdentity:
    """What the meter says it is. ``serial`` is the value the registry's serial is compared
    with (a driver may say where it came from in ``session.identity_source``, e.g. the DLMS
    logical device name when the meter has no serial-number object). The rest is optional:
    ``""`` when the meter does not give it."""

    serial: str
    manufacturer: str
    model: str
    firmware: str


@dataclass(frozen=True)
class ClockReading:
    """A meter clock read, with the CGM's clock at request and answer (all aware UTC).

    The offset assumes the meter stamped its time half-way through the round trip, which
    removes the transport latency from the measured drift.
    """

    meter_time: datetime
    sent_at: datetime
    received_at: datetime
    status: int | None = None  # protocol clock status byte where the meter gives one

    @property
    def round_trip(self) -> float:
        return (self.received_at - self.sent_at).total_seconds()

    @property
    def offset(self) -> float:
        """Seconds the meter is ahead (+) or behind (−) the CGM clock."""
        midpoint = self.sent_at + (self.received_at - self.sent_at) / 2
        return (self.meter_time - midpoint).total_seconds()


@dataclass(frozen=True)
class ProfileColumn:
    """One column of a meter's load profile and what the driver makes of it (``cgm probe``).

    ``use``: ``interval`` (energy of the capture period), ``cumulative`` (a register value,
    differenced between entries), ``clock``, ``status``, or ``ignored`` (with ``note``).
    """

    source: str  # protocol address, e.g. "class 3 1-0:1.8.0.255 attr 2"
    use: str
    channel: Channel | None = None
    scaler: int | None = None
    unit: str | None = None
    note: str = ""


@dataclass(frozen=True)
class ProfileConfig:
    """Load-profile configuration as the meter reports it."""

    capture_period: timedelta
    depth: int  # entries the profile buffer holds
    channels: tuple[Channel, ...]
    columns: tuple[ProfileColumn, ...] = ()  # where the driver knows the layout

    @property
    def memory_span(self) -> timedelta:
        return self.capture_period * self.depth


class EntryStatus(IntEnum):
    """Status bits a meter attaches to a profile entry (DLMS 'AMR profile status' style)."""

    CRITICAL_ERROR = 0x01
    CLOCK_INVALID = 0x02
    DATA_NOT_VALID = 0x04
    DAYLIGHT_SAVING = 0x08
    CLOCK_ADJUSTED = 0x20
    POWER_DOWN = 0x80


@dataclass(frozen=True)
class ProfileEntry:
    """Energy measured in one capture interval, in meter (secondary) units.

    ``start`` is the interval start in UTC; meters stamp the end, drivers convert.
    A channel absent from ``values`` was not captured; it is not zero.
    """

    start: datetime
    period: timedelta
    values: Mapping[Channel, float]
    status: int = 0
    # Channels whose value is a cumulative register's advance that wrapped past its maximum
    # inside this interval (see drivers.cumulative): correct, but flagged for review.
    rollover: frozenset[Channel] = frozenset()

    @property
    def end(self) -> datetime:
        return self.start + self.period


@dataclass(frozen=True)
class RegisterValue:
    """A cumulative energy register, scaler applied, in meter (secondary) units."""

    channel: Channel
    value: float
    unit: str
    read_at: datetime  # CGM clock (UTC) when the answer arrived


@dataclass(frozen=True)
class SessionEvent:
    """Something a session handled that an operator should see and cgm should count.

    ``kind`` is stable, for metrics (e.g. ``list_fallback``, ``rollover``, ``reset``,
    ``gap``); drivers know nothing of Prometheus, so they record and log, and cgm counts.
    """

    kind: str
    detail: str


# --- errors -------------------------------------------------------------------------------


class DriverError(Exception):
    """A read or write that did not produce a value. ``reason`` is stable, for metrics."""

    reason = "error"

    def __init__(self, message: str, *, endpoint: Endpoint | None = None) -> None:
        super().__init__(message)
        self.endpoint = endpoint


class MeterTimeout(DriverError):
    reason = "timeout"


class ConnectionFailed(DriverError):
    """Could not connect, or the connection dropped mid-session."""

    reason = "connection"


class AuthenticationFailed(DriverError):
    """The meter refused the credentials (wrong password or key)."""

    reason = "auth"


class AccessDenied(DriverError):
    """Authenticated, but this access level may not do that (e.g. level 1 setting the clock)."""

    reason = "access_denied"


class ProtocolError(DriverError):
    """A corrupt or unexpected frame."""

    reason = "protocol"


class NotSupported(DriverError):
    """The meter does not offer this (e.g. a Modbus map without a profile)."""

    reason = "unsupported"


# --- sessions ----------------------------------------------------------------------------


def utcnow() -> datetime:
    return datetime.now(UTC)


class MeterSession(ABC):
    """One open connection to one meter.

    Public methods run one at a time and each must answer within ``timeout`` seconds;
    subclasses implement the ``_``-prefixed coroutines. Use as
    ``async with await driver.connect(...) as s:``.

    Both guarantees are kept at the cost of a flag and a float per call, not a lock and a
    timer per call (they were a quarter of the collection engine's CPU per session): a call
    that finds the session idle just marks it busy (a second caller waits its turn), and one
    timer per session, armed at the first call's deadline, cancels a call only if it is
    still running at its own deadline (otherwise it re-arms for the current call's).
    """

    def __init__(self, endpoint: Endpoint, credentials: Credentials, timeout: float) -> None:
        self.endpoint = endpoint
        self.credentials = credentials
        self.timeout = timeout
        self.events: list[SessionEvent] = []  # handled anomalies, oldest first
        self._busy = False
        self._turns: deque[asyncio.Future[None]] = deque()  # callers waiting for the session
        self._task: asyncio.Task[Any] | None = None  # running the current call
        self._deadline = 0.0  # loop time by which the current call must answer
        self._timer: asyncio.TimerHandle | None = None
        self._armed = 0.0  # the deadline the timer was set for
        self._expired = False  # the timer cancelled the current call

    async def _call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        if self._busy:
            await self._wait_turn()
        else:
            self._busy = True
        try:
            task = asyncio.current_task()
            assert task is not None
            loop = task.get_loop()
            cancelling = task.cancelling()
            self._deadline = deadline = loop.time() + self.timeout
            self._task = task
            if self._timer is None or self._armed > deadline:
                self._arm(loop, deadline)
            try:
                return await fn()
            except asyncio.CancelledError as exc:
                if self._expired:
                    self._expired = False
                    if task.uncancel() <= cancelling:  # nobody else asked it to stop
                        raise MeterTimeout(
                            f"{what}: no answer from {self.endpoint} within {self.timeout:g} s",
                            endpoint=self.endpoint,
                        ) from exc
                raise
            finally:
                self._task = None
                if self._expired:  # cancelled, but the call ended without noticing
                    self._expired = False
                    task.uncancel()
        finally:
            self._next_turn()

    async def _wait_turn(self) -> None:
        turn = asyncio.get_running_loop().create_future()
        self._turns.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # handed the turn, then cancelled
                self._next_turn()
            raise

    def _next_turn(self) -> None:
        """Hand the session to the next waiting caller, or mark it idle."""
        while self._turns:
            turn = self._turns.popleft()
            if not turn.done():
                turn.set_result(None)  # stays busy: the waiter owns the session now
                return
        self._busy = False

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed = when
        self._timer = loop.call_at(when, self._on_deadline)

    def _on_deadline(self) -> None:
        self._timer = None
        task = self._task
        if task is None:  # between calls: the next call arms it again
            return
        if self._deadline > self._armed:  # calls went on since: wait for this one's deadline
            self._arm(task.get_loop(), self._deadline)
            return
        self._expired = True
        task.cancel()

    async def identify(self) -> MeterIdentity:
        return await self._call("identify", self._identify)

    async def read_clock(self) -> ClockReading:
        return await self._call("read_clock", self._read_clock)

    async def set_clock(self, when: datetime) -> None:
        """Set the meter clock (level 2). ``when`` is aware; drivers convert as the meter needs."""
        if when.tzinfo is None:
            raise ValueError("set_clock needs an aware datetime")
        await self._call("set_clock", lambda: self._set_clock(when))

    async def read_profile_config(self) -> ProfileConfig:
        return await self._call("read_profile_config", self._read_profile_config)

    async def read_profile(self, start: datetime, end: datetime) -> list[ProfileEntry]:
        """Entries whose interval starts in [start, end), oldest first."""
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError("read_profile needs aware datetimes")
        return await self._call("read_profile", lambda: self._read_profile(start, end))

    async def read_registers(self) -> list[RegisterValue]:
        return await self._call("read_registers", self._read_registers)

    async def close(self) -> None:
        """Release the association and close the connection; never raises. Within
        ``timeout``, after the call running now (if any) has ended."""
        try:
            await self._call("close", self._close)
        except Exception:  # noqa: BLE001 - closing must not mask the real outcome
            pass
        finally:
            if self._timer is not None and not self._busy:
                self._timer.cancel()
                self._timer = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @abstractmethod
    async def _identify(self) -> MeterIdentity: ...

    @abstractmethod
    async def _read_clock(self) -> ClockReading: ...

    @abstractmethod
    async def _set_clock(self, when: datetime) -> None: ...

    @abstractmethod
    async def _read_profile_config(self) -> ProfileConfig: ...

    @abstractmethod
    async def _read_profile(self, start: datetime, end: datetime) -> list[ProfileEntry]: ...

    @abstractmethod
    async def _read_registers(self) -> list[RegisterValue]: ...

    @abstractmethod
    async def _close(self) -> None: ...


class Driver(ABC):
    """A protocol: turns an endpoint, credentials and protocol parameters into a session."""

    protocol: str

    @abstractmethod
    async def connect(
        self,
        endpoint: Endpoint,
        credentials: Credentials,
        params: Mapping[str, Any] | None = None,
        timeout: float = 10.0,
    ) -> MeterSession:
        """Open and authenticate a session; raise a DriverError subclass on failure."""
