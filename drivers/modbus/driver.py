"""Modbus TCP driver: pymodbus' ``AsyncModbusTcpClient`` driven by a register map.

pymodbus returns exception responses as results and raises on timeouts, but it treats a
damaged frame as noise (it skips it and waits, so a corrupt answer would surface as a
timeout) and it does not wake a pending request when the connection drops (the request
waits for its own timeout). A CGM needs those three apart, for failure statistics and
for the retry policy, so the session watches the byte stream with pymodbus' own hooks
(``trace_packet``, ``trace_connect``): every answer is checked as an MBAP frame and
decoded with pymodbus' ``DecodePDU`` before the library sees it, and a disconnect
fails the pending request at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import DecodePDU, ModbusPDU

from drivers.base import (
    AccessDenied,
    AuthenticationFailed,
    Channel,
    ClockReading,
    ConnectionFailed,
    Credentials,
    Driver,
    DriverError,
    Endpoint,
    MeterIdentity,
    MeterSession,
    MeterTimeout,
    NotSupported,
    ProfileConfig,
    ProfileEntry,
    ProtocolError,
    RegisterValue,
    SessionEvent,
    utcnow,
)
from drivers.cumulative import CumulativeRow, profile_entries, rollover_value
from drivers.modbus.registermap import (
    FUNCTION_CODES,
    WORD_ORDERS,
    ClockSpec,
    Item,
    Order,
    ProfileSpec,
    RegisterMap,
    from_meter_epoch,
    load_map,
    map_path,
    parse_order,
    to_meter_epoch,
)

# Not the driver's, accepted so that a registry entry may carry them: ``register_max`` (where
# the counters roll over, for snapshot differencing) and the meter ratings the CGM's
# plausibility guard reads (``cgm/collection/plausibility.py``).
CGM_PARAMS = ("register_max", "max_current_a", "rated_current_a", "nominal_voltage_v")
PARAMS = ("map", "device_id", "byte_order", "word_order", *CGM_PARAMS)
log = logging.getLogger(__name__)
Span = tuple[str, int, int]  # (function, address, registers)


class ModbusExceptionResponse(ProtocolError):
    """The meter answered with a Modbus exception the map gives no meaning to."""

    def __init__(self, message: str, code: int, *, endpoint: Endpoint | None = None) -> None:
        super().__init__(message, endpoint=endpoint)
        self.code = code


def _code_name(code: int) -> str:
    try:
        return f"0x{code:02X} {ExcCodes(code).name}"
    except ValueError:
        return f"0x{code:02X} (device-specific)"


class ModbusSession(MeterSession):
    """One TCP connection to one unit id, logged in at the credentials' level."""

    def __init__(
        self,
        endpoint: Endpoint,
        credentials: Credentials,
        timeout: float,
        regmap: RegisterMap,
        device_id: int,
        order: Order,
    ) -> None:
        super().__init__(endpoint, credentials, timeout)
        self.map = regmap
        self.device_id = device_id
        self.order: Order = order
        self.register_max: float | None = None
        self.level: int | None = None  # what the meter says it granted
        self._decoder = DecodePDU(False)
        self._expect: tuple[int, int] | None = None  # (function code, registers) in flight
        self._failure: DriverError | None = None  # set by the stream hooks
        self._wake = asyncio.Event()
        self._lost = False
        self._capture_period: timedelta | None = None
        self._client = AsyncModbusTcpClient(
            endpoint.host,
            port=endpoint.port,
            name=f"cgm-modbus-{endpoint}",
            timeout=timeout,
            retries=0,  # the collector owns retries; a resend would hide a flaky meter
            reconnect_delay=0,  # never reconnect silently: a session is one connection
            trace_packet=self._trace_packet,
            trace_connect=self._trace_connect,
        )

    # --- connection and login ------------------------------------------------------------

    async def _open(self) -> None:
        try:
            connected = await self._client.connect()
        except OSError as exc:
            raise ConnectionFailed(
                f"cannot connect to {self.endpoint}: {exc}", endpoint=self.endpoint
            ) from exc
        if not connected:
            raise ConnectionFailed(f"cannot connect to {self.endpoint}", endpoint=self.endpoint)
        self._lost = False
        await self._login()

    async def _login(self) -> None:
        """Write the password; the meter grants level 1 or 2 or answers ``auth_failed``.
        A map without ``access`` is a meter whose reads are open: nothing is written."""
        item = self.map.password
        if item is None:
            self.level = int(self.credentials.level)
            return
        secret = self.credentials.secret
        if len(secret.encode("ascii", errors="replace")) > item.size * 2:
            raise AuthenticationFailed(
                f"secret longer than the meter's {item.size * 2}-character password field",
                endpoint=self.endpoint,
            )
        try:
            await self._write(item.address, item.encode(secret, self.order))
        except ModbusExceptionResponse as exc:
            if exc.code == self.map.auth_failed_code:
                raise AuthenticationFailed(
                    f"meter {self.endpoint} unit {self.device_id} refused the level "
                    f"{int(self.credentials.level)} password",
                    endpoint=self.endpoint,
                ) from exc
            raise
        if self.map.level is None:
            self.level = int(self.credentials.level)
            return
        values = await self._read_items([self.map.level])
        self.level = int(values[self.map.level])  # type: ignore[arg-type]
        if self.level < self.credentials.level:
            raise AuthenticationFailed(
                f"password grants level {self.level}, credentials claim level "
                f"{int(self.credentials.level)}",
                endpoint=self.endpoint,
            )

    async def _close(self) -> None:
        # Logging out is closing: unlock state belongs to the TCP connection.
        self._expect = None
        self._client.close()

    # --- request plumbing ----------------------------------------------------------------

    def _trace_connect(self, connected: bool) -> None:
        if not connected:
            self._lost = True
            self._wake.set()

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        """Check received bytes as MBAP frames; the one answering the request in flight must
        be whole and decodable. Frames with another transaction id are late answers to
        requests that already timed out: pymodbus skips them, so do we."""
        if sending or self._expect is None:
            return data
        fc, count = self._expect
        tid = self._client.ctx.request_transaction_id
        pos, problem = 0, None
        while problem is None and len(data) - pos >= 7:
            frame = data[pos:]
            declared = int.from_bytes(frame[4:6], "big")
            if frame[2:4] != b"\x00\x00":
                problem = f"protocol id {frame[2:4].hex()} is not Modbus"
            elif not 2 <= declared <= 254:
                problem = f"MBAP length {declared} out of range"
            elif len(frame) < 6 + declared:
                return data  # the rest is on its way
            elif int.from_bytes(frame[0:2], "big") != tid:
                pos += 6 + declared  # a stale answer
            elif self.device_id and frame[6] != self.device_id:  # unit 0: any (as pymodbus)
                problem = f"answer from unit {frame[6]}, asked unit {self.device_id}"
            elif len(frame) > 6 + declared:
                problem = f"{len(frame) - 6 - declared} bytes beyond the MBAP length {declared}"
            elif frame[7] not in (fc, fc | 0x80):
                problem = f"function code 0x{frame[7]:02X} answering 0x{fc:02X}"
            elif fc in (3, 4) and frame[7] == fc:
                # A read answer is function code, byte count, registers: checked here
                # without decoding the PDU a second time (pymodbus decodes it again; the
                # double decode was ~5 % of the collector's CPU per Modbus session).
                if frame[8] != 2 * count or declared != 3 + 2 * count:
                    problem = (
                        f"byte count {frame[8]} and {declared - 3} data bytes answering a "
                        f"read of {count} registers"
                    )
                else:
                    return data
            elif (pdu := self._decoder.decode(frame[7:])) is None:
                problem = f"undecodable PDU {frame[7:].hex()}"
            elif fc in (3, 4) and not pdu.isError() and len(pdu.registers) != count:
                problem = f"{len(pdu.registers)} registers answering a read of {count}"
            else:
                return data
        if problem is None:
            return data
        self._failure = ProtocolError(
            f"corrupt frame from {self.endpoint}: {problem}", endpoint=self.endpoint
        )
        self._wake.set()
        return b""  # keep pymodbus from acting on it

    async def _execute(
        self, fc: int, count: int, call: Callable[[], Awaitable[ModbusPDU]]
    ) -> ModbusPDU:
        """Run one pymodbus request; classify every way it can fail."""
        if self._lost or self._failure is not None or not self._client.connected:
            raise ConnectionFailed(
                f"session to {self.endpoint} is closed"
                + (f" after: {self._failure}" if self._failure else ""),
                endpoint=self.endpoint,
            )
        self._expect = (fc, count)
        self._wake.clear()
        try:
            task = asyncio.ensure_future(call())
        except ConnectionException as exc:
            raise ConnectionFailed(f"{self.endpoint}: {exc}", endpoint=self.endpoint) from exc
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({task, waker}, return_when=asyncio.FIRST_COMPLETED)
            answered = task.done()
        finally:
            waker.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            self._expect = None
        if self._failure is not None:
            self._client.close()  # the stream is out of step; nothing after this is trusted
            raise self._failure
        if not answered:  # woken by a disconnect
            raise ConnectionFailed(f"{self.endpoint} closed the connection", endpoint=self.endpoint)
        try:
            response = task.result()
        except ConnectionException as exc:
            raise ConnectionFailed(f"{self.endpoint}: {exc}", endpoint=self.endpoint) from exc
        except ModbusIOException as exc:
            if self._lost:
                raise ConnectionFailed(f"{self.endpoint}: {exc}", endpoint=self.endpoint) from exc
            raise MeterTimeout(
                f"no answer from {self.endpoint} unit {self.device_id}", endpoint=self.endpoint
            ) from exc
        except ModbusException as exc:
            raise ProtocolError(f"{self.endpoint}: {exc}", endpoint=self.endpoint) from exc
        if response.isError():
            self._raise_exception(fc, response.exception_code)
        return response

    def _raise_exception(self, fc: int, code: int) -> None:
        what = f"meter {self.endpoint} unit {self.device_id} answered {_code_name(code)}"
        if code == self.map.access_denied_code:
            raise AccessDenied(
                f"{what} to function 0x{fc:02X} at level {self.level}", endpoint=self.endpoint
            )
        if code == ExcCodes.GATEWAY_NO_RESPONSE:
            raise MeterTimeout(f"{what}: gateway got no answer", endpoint=self.endpoint)
        if code == ExcCodes.GATEWAY_PATH_UNAVIABLE:
            raise ConnectionFailed(f"{what}: gateway has no path", endpoint=self.endpoint)
        raise ModbusExceptionResponse(what, code, endpoint=self.endpoint)

    async def _read(self, function: str, address: int, count: int) -> list[int]:
        fc = FUNCTION_CODES[function]
        reader = (
            self._client.read_holding_registers if fc == 3 else self._client.read_input_registers
        )
        rr = await self._execute(
            fc, count, lambda: reader(address, count=count, device_id=self.device_id)
        )
        return list(rr.registers)

    async def _write(self, address: int, values: Sequence[int]) -> None:
        regs = list(values)
        await self._execute(
            16, 0, lambda: self._client.write_registers(address, regs, device_id=self.device_id)
        )

    async def _read_spans(self, spans: Sequence[Span]) -> dict[Span, list[int]]:
        """Read spans in as few requests as possible (contiguous runs, up to ``max_read``)."""
        out: dict[Span, list[int]] = {}
        ordered = sorted(set(spans))
        i = 0
        while i < len(ordered):
            function, start, size = ordered[i]
            group = [ordered[i]]
            end = start + size
            while i + len(group) < len(ordered):
                nf, na, ns = ordered[i + len(group)]
                if nf != function or na != end or na + ns - start > self.map.max_read:
                    break
                group.append(ordered[i + len(group)])
                end = na + ns
            regs = await self._read(function, start, end - start)
            for span in group:
                out[span] = regs[span[1] - start : span[1] - start + span[2]]
            i += len(group)
        return out

    async def _read_items(self, items: Sequence[Item]) -> dict[Item, float | int | str]:
        regs = await self._read_spans([(i.function, i.address, i.size) for i in items])
        return {i: i.decode(regs[(i.function, i.address, i.size)], self.order) for i in items}

    # --- the interface -------------------------------------------------------------------

    async def _identify(self) -> MeterIdentity:
        items = [i for i in self.map.identity.values() if isinstance(i, Item)]
        values = await self._read_items(items)
        fields = {
            name: str(values[v]) if isinstance(v, Item) else v
            for name, v in self.map.identity.items()
        }
        return MeterIdentity(**fields)

    def _clock(self) -> ClockSpec:
        if self.map.clock is None:
            raise NotSupported(
                f"map {self.map.name!r} ({self.map.model}) has no clock over Modbus",
                endpoint=self.endpoint,
            )
        return self.map.clock

    async def _read_clock(self) -> ClockReading:
        clock = self._clock()
        span: Span = (clock.function, clock.address, clock.size)
        spans = [span]
        status = clock.status
        if (
            status
            and status.function == clock.function
            and status.address == clock.address + clock.size
        ):
            spans.append((status.function, status.address, status.size))  # same request
        sent_at = utcnow()
        regs = await self._read_spans(spans)
        received_at = utcnow()
        try:
            meter_time = clock.decode(regs[span], self.order)
        except (ValueError, OverflowError) as exc:
            raise ProtocolError(
                f"{self.endpoint}: clock registers {regs[span]} are not a date: {exc}",
                endpoint=self.endpoint,
            ) from exc
        status_value = None
        if status:
            key = (status.function, status.address, status.size)
            raw = regs[key] if key in regs else (await self._read_spans([key]))[key]
            status_value = int(status.decode(raw, self.order))
        return ClockReading(meter_time, sent_at, received_at, status_value)

    async def _set_clock(self, when: datetime) -> None:
        # The clock registers hold whole seconds: write on a second boundary, not truncated.
        if delay := (1_000_000 - when.microsecond) % 1_000_000 / 1e6:
            await asyncio.sleep(delay)
            when = when + timedelta(seconds=delay)
        clock = self._clock()
        await self._write(clock.address, clock.encode(when, self.order))

    def _profile(self) -> ProfileSpec:
        if self.map.profile is None:
            raise NotSupported(
                f"map {self.map.name!r} ({self.map.model}) has no load profile; derive "
                "intervals from register snapshots",
                endpoint=self.endpoint,
            )
        return self.map.profile

    async def _read_profile_config(self) -> ProfileConfig:
        p = self._profile()
        values = await self._read_items([p.capture_period, p.depth])
        seconds = int(values[p.capture_period])  # type: ignore[arg-type]
        if seconds <= 0:
            raise ProtocolError(f"{self.endpoint}: capture period {seconds} s")
        self._capture_period = timedelta(seconds=seconds)
        return ProfileConfig(
            self._capture_period,
            int(values[p.depth]),  # type: ignore[arg-type]
            tuple(ch for ch, _ in p.channels),
        )

    async def _read_profile(self, start: datetime, end: datetime) -> list[ProfileEntry]:
        p = self._profile()
        if self._capture_period is None:
            await self._read_profile_config()
        period = cast(timedelta, self._capture_period)
        if p.values == "interval":
            return [
                ProfileEntry(at, period, values, status)
                for at, values, status in await self._read_records(p, period, start, end)
            ]
        # Cumulative records: one more record before the range opens its first interval.
        records = await self._read_records(p, period, start - period, end)
        rows = [CumulativeRow(at + period, values, status) for at, values, status in records]
        limits = {ch: self._register_max(item) for ch, item in p.channels}
        entries, events = profile_entries(rows, period=period, register_max=limits)
        for event in events:
            self._event(str(event.kind), str(event))
        return [e for e in entries if start <= e.start < end]

    def _register_max(self, item: Item) -> float | None:
        """Where a cumulative field wraps: the ``register_max`` parameter, else its width."""
        if self.register_max is not None:
            return self.register_max
        if item.type.startswith(("float", "int")):
            return None  # floats do not wrap; signed counters: unknown, no rollover assumed
        return rollover_value(bits=16 * item.size, factor=item.scaler)

    def _event(self, kind: str, detail: str) -> None:
        """Record (for cgm to count) and log something this session handled."""
        self.events.append(SessionEvent(kind, detail))
        log.warning("Modbus %s unit %s: %s: %s", self.endpoint, self.device_id, kind, detail)

    async def _read_records(
        self, p: ProfileSpec, period: timedelta, start: datetime, end: datetime
    ) -> list[tuple[datetime, dict[Channel, float], int]]:
        """(interval start, field values, status) of the records starting in [start, end)."""
        tz = self._clock().tz
        shift = period if p.stamp == "end" else timedelta(0)
        selector = to_meter_epoch(start + shift, tz)  # first record starting at or after start
        out: list[tuple[datetime, dict[Channel, float], int]] = []
        last_stamp = -1
        while True:
            await self._write(p.selector.address, p.selector.encode(selector, self.order))
            regs = await self._read(p.function, p.address, p.window_size)
            records = 0
            for k in range(p.records):
                rec = regs[k * p.record_size : (k + 1) * p.record_size]

                def field(item: Item, rec: list[int] = rec) -> float | int | str:
                    return item.decode(rec[item.address : item.end], self.order)

                stamp = int(field(p.timestamp))  # type: ignore[arg-type]
                if stamp == 0:
                    break
                if stamp <= last_stamp or stamp < selector:
                    raise ProtocolError(
                        f"{self.endpoint}: profile record {stamp} out of order "
                        f"(selector {selector}, previous {last_stamp})",
                        endpoint=self.endpoint,
                    )
                last_stamp = stamp
                records += 1
                entry_start = from_meter_epoch(stamp, tz) - shift
                if entry_start >= end:
                    return out
                if entry_start >= start:
                    out.append(
                        (
                            entry_start,
                            {ch: float(field(item)) for ch, item in p.channels},
                            int(field(p.status)) if p.status else 0,  # type: ignore[arg-type]
                        )
                    )
            if records < p.records:
                return out  # the meter has nothing newer
            selector = last_stamp + 1

    async def _read_registers(self) -> list[RegisterValue]:
        items = [item for _, item in self.map.registers]
        regs = await self._read_spans([(i.function, i.address, i.size) for i in items])
        read_at = utcnow()
        out = []
        for ch, item in self.map.registers:
            raw = regs[(item.function, item.address, item.size)]
            if item.unavailable(raw, self.order):
                # The meter says it has no value: the channel is absent, never a number.
                log.warning("%s unit %s: %s not available", self.endpoint, self.device_id, ch)
                continue
            value = float(item.decode(raw, self.order))
            out.append(RegisterValue(ch, value, item.unit or ch.unit, read_at))
        return out


class ModbusDriver(Driver):
    """``params``: ``map`` (model name or YAML path, required), ``device_id`` (unit id,
    default 1), ``byte_order`` (ABCD/CDAB/BADC/DCBA) or ``word_order`` (big/little):
    overrides the map default, as installations configure some meters or gateways."""

    protocol = "modbus"

    def __init__(self) -> None:
        self._maps: dict[tuple[Path, int], RegisterMap] = {}

    def register_map(self, ref: str | Path) -> RegisterMap:
        """Load (and cache until the file changes) a map; raises ``MapError``."""
        path = map_path(ref)
        try:
            key = (path.resolve(), path.stat().st_mtime_ns)
        except OSError:
            return load_map(ref)  # raises a MapError naming the file
        if key not in self._maps:
            self._maps[key] = load_map(path)
        return self._maps[key]

    async def connect(
        self,
        endpoint: Endpoint,
        credentials: Credentials,
        params: Mapping[str, Any] | None = None,
        timeout: float = 10.0,
    ) -> ModbusSession:
        params = dict(params or {})
        if unknown := sorted(set(params) - set(PARAMS)):
            raise ValueError(f"modbus: unknown connection parameter {unknown[0]!r}; use {PARAMS}")
        if "map" not in params:
            raise ValueError("modbus: connection parameter 'map' (model name or path) is required")
        regmap = self.register_map(params["map"])
        device_id = params.get("device_id", 1)
        if (
            isinstance(device_id, bool)
            or not isinstance(device_id, int)
            or not 0 <= device_id <= 255
        ):
            raise ValueError(f"modbus: device_id {device_id!r} is not a unit id 0..255")
        for key in CGM_PARAMS:
            limit = params.get(key)
            if limit is not None and (
                isinstance(limit, bool) or not isinstance(limit, int | float) or not limit > 0
            ):
                raise ValueError(f"modbus: {key} {limit!r} is not a positive number")
        if "byte_order" in params and "word_order" in params:
            raise ValueError("modbus: give byte_order or word_order, not both")
        order = regmap.order
        for key in ("byte_order", "word_order"):
            if key in params:
                allowed = WORD_ORDERS if key == "word_order" else ()
                if allowed and params[key] not in allowed:
                    raise ValueError(f"modbus: word_order {params[key]!r} is not 'big' or 'little'")
                try:
                    order = parse_order(params[key])
                except ValueError as exc:
                    raise ValueError(f"modbus: {key} {exc}") from exc
        session = ModbusSession(endpoint, credentials, timeout, regmap, device_id, order)
        if params.get("register_max") is not None:
            session.register_max = float(params["register_max"])
        try:
            await asyncio.wait_for(session._open(), timeout)
        except TimeoutError as exc:
            await session.close()
            raise MeterTimeout(
                f"connect/login to {endpoint}: no answer within {timeout:g} s", endpoint=endpoint
            ) from exc
        except BaseException:
            await session.close()
            raise
        return session
