"""Modbus TCP driver: one asyncio connection, MBAP frames by ``struct``, driven by a
register map.

The transport is small on purpose (see README, "Transport"): FC3/FC4/FC16 request and
answer PDUs are a few fixed fields, and pymodbus' client machinery around them (transaction
manager, framer, a task and a ``wait_for`` per request, its trace hooks) was two thirds of
this driver's CPU per session. Every answer is checked as an MBAP frame before it is used:
a damaged frame is a ``ProtocolError`` at once (not noise that ends in a timeout), a dropped
connection fails the requests in flight at once, a late answer to a request that already
timed out (recognised by its transaction id) is skipped.

Where the map (or the connection) allows ``pipeline`` > 1, the requests of one step are sent
together and matched to their answers by transaction id, and the identity and profile
configuration are read in the same round trip as the login.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import struct
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

from pymodbus.constants import ExcCodes

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
    MAX_PIPELINE,
    WORD_ORDERS,
    Block,
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
PARAMS = ("map", "device_id", "byte_order", "word_order", "pipeline", *CGM_PARAMS)
log = logging.getLogger(__name__)
Span = tuple[str, int, int]  # (function, address, registers)
Read = tuple[Block, int]  # an answer's data and the byte offset of a span in it

HEADER = struct.Struct(">HHHB")  # MBAP: transaction id, protocol id, length, unit id
READ_REQUEST = struct.Struct(">HHHBBHH")  # MBAP + function code, address, count
WRITE_ECHO = struct.Struct(">HH")  # FC16 answer: address, count


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


@functools.lru_cache(maxsize=1024)
def _groups(spans: tuple[Span, ...], max_read: int) -> list[list[Span]]:
    """Spans in as few reads as possible (contiguous runs, up to ``max_read``); each group's
    first element names the read as (function, start, registers). A map asks for the same
    few span lists every session: remembered."""
    groups: list[list[Span]] = []
    ordered = sorted(set(spans))
    i = 0
    while i < len(ordered):
        function, start, size = ordered[i]
        group = [ordered[i]]
        end = start + size
        while i + len(group) < len(ordered):
            nf, na, ns = ordered[i + len(group)]
            if nf != function or na != end or na + ns - start > max_read:
                break
            group.append(ordered[i + len(group)])
            end = na + ns
        groups.append([(function, start, end - start), *group])
        i += len(group)
    return groups


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
        future.exception()  # retrieved: a request nobody awaits any more is not an error


class _Request:
    __slots__ = ("fc", "address", "count", "future")

    def __init__(self, fc: int, address: int, count: int, future: asyncio.Future[Any]) -> None:
        self.fc, self.address, self.count, self.future = fc, address, count, future


class _Link(asyncio.Protocol):
    """The TCP connection: frames out, answers matched to requests by transaction id."""

    def __init__(self, session: ModbusSession) -> None:
        self.session = session
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, _Request] = {}
        self.out: list[bytes] = []
        self.buffer = b""
        self.tid = 0
        self.failure: DriverError | None = None  # once set, nothing on this stream is trusted

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        ep = self.session.endpoint
        if self.failure is None:
            self.failure = ConnectionFailed(f"{ep} closed the connection", endpoint=ep)
        self._fail_all(self.failure)

    def _fail_all(self, failure: DriverError) -> None:
        pending, self.pending = self.pending, {}
        for request in pending.values():
            _fail(request.future, type(failure)(str(failure), endpoint=failure.endpoint))

    def closed_error(self) -> ConnectionFailed:
        failure = self.failure
        return ConnectionFailed(
            f"session to {self.session.endpoint} is closed"
            + (f" after: {failure}" if failure else ""),
            endpoint=self.session.endpoint,
        )

    def submit(self, fc: int, address: int, count: int, values: Sequence[int] = ()) -> _Request:
        """Queue one request (sent by :meth:`flush`); its future gets the answer's data
        bytes (reads), None (writes) or the error."""
        if self.failure is not None or self.transport is None or self.transport.is_closing():
            raise self.closed_error()
        self.tid = tid = (self.tid + 1) & 0xFFFF
        unit = self.session.device_id
        if fc == 16:
            n = len(values)
            self.out.append(
                struct.pack(
                    f">HHHBBHHB{n}H", tid, 0, 7 + 2 * n, unit, 16, address, n, 2 * n, *values
                )
            )
        else:
            self.out.append(READ_REQUEST.pack(tid, 0, 6, unit, fc, address, count))
        request = _Request(fc, address, count, asyncio.get_running_loop().create_future())
        self.pending[tid] = request
        return request

    def flush(self) -> None:
        if self.out and self.transport is not None:
            self.transport.write(self.out[0] if len(self.out) == 1 else b"".join(self.out))
        self.out.clear()

    def close(self, failure: DriverError) -> None:
        if self.failure is None:
            self.failure = failure
        self._fail_all(self.failure)
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data if self.buffer else data
        pos, size = 0, len(buf)
        while size - pos >= 7 and self.failure is None:
            tid, protocol, length, unit = HEADER.unpack_from(buf, pos)
            end = pos + 6 + length
            if protocol != 0:
                self._corrupt(f"protocol id {protocol:04x} is not Modbus")
            elif not 2 <= length <= 254:
                self._corrupt(f"MBAP length {length} out of range")
            elif end > size:
                break  # the rest is on its way
            else:
                request = self.pending.pop(tid, None)
                if request is not None and not request.future.done():  # else: a stale answer
                    self._answer(request, unit, buf[pos + 7 : end])
            pos = end
        self.buffer = buf[pos:] if self.failure is None else b""

    def _answer(self, request: _Request, unit: int, pdu: bytes) -> None:
        device_id, fc = self.session.device_id, request.fc
        got = pdu[0]
        problem = None
        if device_id and unit != device_id:  # unit 0 (broadcast/any): any answer, as pymodbus
            problem = f"answer from unit {unit}, asked unit {device_id}"
        elif got == fc:
            if fc == 16:
                if len(pdu) == 5 and WRITE_ECHO.unpack_from(pdu, 1) == (
                    request.address,
                    request.count,
                ):
                    return request.future.set_result(None)
                problem = f"write answer {pdu.hex()} does not echo the request"
            elif len(pdu) == 2 + 2 * request.count and pdu[1] == 2 * request.count:
                return request.future.set_result(pdu[2:])
            else:
                problem = (
                    f"byte count {pdu[1] if len(pdu) > 1 else '-'} and {len(pdu) - 2} data "
                    f"bytes answering a read of {request.count} registers"
                )
        elif got == fc | 0x80 and len(pdu) == 2:
            return _fail(request.future, self.session._exception(fc, pdu[1]))
        else:
            problem = f"function code 0x{got:02X} answering 0x{fc:02X} ({pdu.hex()})"
        self.pending[0x10000] = request  # failed with the rest (not a transaction id)
        self._corrupt(problem)

    def _corrupt(self, problem: str) -> None:
        ep = self.session.endpoint
        # The stream is out of step: fail everything in flight, close, trust nothing after.
        self.close(ProtocolError(f"corrupt frame from {ep}: {problem}", endpoint=ep))


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
        pipeline: int = 1,
    ) -> None:
        super().__init__(endpoint, credentials, timeout)
        self.map = regmap
        self.device_id = device_id
        self.order: Order = order
        self.pipeline = pipeline
        self.register_max: float | None = None
        self.level: int | None = None  # what the meter says it granted
        self._link: _Link | None = None
        self._prefetched: dict[Span, _Request] = {}  # read groups sent ahead (pipelining)
        self._capture_period: timedelta | None = None

    # --- connection and login ------------------------------------------------------------

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, link = await loop.create_connection(
                lambda: _Link(self), self.endpoint.host, self.endpoint.port
            )
        except OSError as exc:
            raise ConnectionFailed(
                f"cannot connect to {self.endpoint}: {exc}", endpoint=self.endpoint
            ) from exc
        self._link = link
        await self._login()

    def _prefetch(self) -> None:
        """With pipelining: queue the reads every session makes whatever the meter's answers
        (identity, profile configuration) behind the login, for one round trip. Each one's
        answer, or error, is taken by the step that asks for it."""
        if self.pipeline < 2:
            return
        items = [i for i in self.map.identity.values() if isinstance(i, Item)]
        if self.map.profile is not None:
            items += [self.map.profile.capture_period, self.map.profile.depth]
        link = cast(_Link, self._link)
        for group in self._groups([i.span for i in items]):
            if len(link.pending) >= self.pipeline:
                break
            function, start, count = group[0]
            self._prefetched[group[0]] = link.submit(FUNCTION_CODES[function], start, count)

    async def _login(self) -> None:
        """Write the password; the meter grants level 1 or 2 or answers ``auth_failed``.
        A map without ``access`` is a meter whose reads are open: nothing is written."""
        item = self.map.password
        link = cast(_Link, self._link)
        if item is None:
            self.level = int(self.credentials.level)
            self._prefetch()
            link.flush()
            return
        secret = self.credentials.secret
        if len(secret.encode("ascii", errors="replace")) > item.size * 2:
            raise AuthenticationFailed(
                f"secret longer than the meter's {item.size * 2}-character password field",
                endpoint=self.endpoint,
            )
        regs = item.encode(secret, self.order)
        login = link.submit(16, item.address, len(regs), regs)
        level = self.map.level
        read_back = None
        if self.pipeline > 1:  # the level read-back and the prefetch go with the login
            read_back = self._submit_reads([level.span], flush=False) if level else None
            self._prefetch()
        link.flush()
        try:
            await self._result(login)
        except ModbusExceptionResponse as exc:
            if exc.code == self.map.auth_failed_code:
                raise AuthenticationFailed(
                    f"meter {self.endpoint} unit {self.device_id} refused the level "
                    f"{int(self.credentials.level)} password",
                    endpoint=self.endpoint,
                ) from exc
            raise
        if level is None:
            self.level = int(self.credentials.level)
            return
        if read_back is None:
            read_back = self._submit_reads([level.span])
        reads = await self._collect(read_back)
        block, pos = reads[level.span]
        self.level = int(level.value(block, pos, self.order))
        if self.level < self.credentials.level:
            raise AuthenticationFailed(
                f"password grants level {self.level}, credentials claim level "
                f"{int(self.credentials.level)}",
                endpoint=self.endpoint,
            )

    async def _close(self) -> None:
        # Logging out is closing: unlock state belongs to the TCP connection.
        self._prefetched.clear()
        if self._link is not None:
            self._link.close(
                ConnectionFailed(f"session to {self.endpoint} closed", endpoint=self.endpoint)
            )

    # --- request plumbing ----------------------------------------------------------------

    def _exception(self, fc: int, code: int) -> DriverError:
        """The error for an exception answer (a meter's own word, not a broken stream)."""
        what = f"meter {self.endpoint} unit {self.device_id} answered {_code_name(code)}"
        if code == self.map.access_denied_code:
            return AccessDenied(
                f"{what} to function 0x{fc:02X} at level {self.level}", endpoint=self.endpoint
            )
        if code == ExcCodes.GATEWAY_NO_RESPONSE:
            return MeterTimeout(f"{what}: gateway got no answer", endpoint=self.endpoint)
        if code == ExcCodes.GATEWAY_PATH_UNAVIABLE:
            return ConnectionFailed(f"{what}: gateway has no path", endpoint=self.endpoint)
        return ModbusExceptionResponse(what, code, endpoint=self.endpoint)

    def _link_or_closed(self) -> _Link:
        if self._link is None:
            raise ConnectionFailed(
                f"session to {self.endpoint} is not open", endpoint=self.endpoint
            )
        return self._link

    async def _result(self, request: _Request) -> Any:
        # The session's deadline (drivers.base) cancels this wait, and with it the request:
        # its answer, if it comes, is then skipped as stale.
        return await request.future

    async def _write(self, address: int, values: Sequence[int]) -> None:
        link = self._link_or_closed()
        request = link.submit(16, address, len(values), values)
        link.flush()
        await self._result(request)

    def _groups(self, spans: Sequence[Span]) -> list[list[Span]]:
        return _groups(tuple(spans), self.map.max_read)

    def _submit_reads(
        self, spans: Sequence[Span], *, flush: bool = True
    ) -> list[tuple[_Request, list[Span]]]:
        out = []
        link = None
        for read, *group in self._groups(spans):
            # A read sent ahead with the login: its answer (or error) is this step's, as if
            # it had been sent now.
            request = self._prefetched.pop(read, None)
            if request is None:
                link = link or self._link_or_closed()
                request = link.submit(FUNCTION_CODES[read[0]], read[1], read[2])
            out.append((request, [read, *group]))
        if flush and link is not None:
            link.flush()
        return out

    async def _collect(self, submitted: list[tuple[_Request, list[Span]]]) -> dict[Span, Read]:
        out: dict[Span, Read] = {}
        for request, (read, *group) in submitted:
            block = Block(await self._result(request))
            for span in group:
                out[span] = (block, 2 * (span[1] - read[1]))
        return out

    async def _read_spans(self, spans: Sequence[Span]) -> dict[Span, Read]:
        """Read spans in as few requests as possible, pipelined where the meter allows."""
        groups = self._groups(spans)
        if len(groups) == 1:
            return await self._collect(self._submit_reads(spans))
        out: dict[Span, Read] = {}
        for k in range(0, len(groups), self.pipeline):
            chunk = [span for _, *group in groups[k : k + self.pipeline] for span in group]
            out.update(await self._collect(self._submit_reads(chunk)))
        return out

    async def _read_items(self, items: Sequence[Item]) -> dict[Item, float | int | str]:
        reads = await self._read_spans([i.span for i in items])
        out = {}
        for i in items:
            block, pos = reads[i.span]
            out[i] = i.value(block, pos, self.order)
        return out

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
        reads = await self._read_spans(spans)
        received_at = utcnow()
        block, pos = reads[span]
        try:
            meter_time = clock.value(block, pos, self.order)
        except (ValueError, OverflowError) as exc:
            raise ProtocolError(
                f"{self.endpoint}: clock registers {list(block.registers(pos, clock.size))} "
                f"are not a date: {exc}",
                endpoint=self.endpoint,
            ) from exc
        status_value = None
        if status:
            key = (status.function, status.address, status.size)
            block, pos = reads[key] if key in reads else (await self._read_spans([key]))[key]
            status_value = int(status.value(block, pos, self.order))
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
        order = self.order
        fc = FUNCTION_CODES[p.function]
        while True:
            # Selector and window in one round trip where the meter takes two in flight.
            regs = p.selector.encode(selector, order)
            link = self._link_or_closed()
            write = link.submit(16, p.selector.address, len(regs), regs)
            if self.pipeline < 2:
                link.flush()
                await self._result(write)
                link = self._link_or_closed()
            read = link.submit(fc, p.address, p.window_size)
            link.flush()
            if self.pipeline >= 2:
                await self._result(write)
            block = Block(await self._result(read))
            records = 0
            for k in range(p.records):
                base = 2 * k * p.record_size

                def field(item: Item, base: int = base, block: Block = block) -> float | int | str:
                    return item.value(block, base + 2 * item.address, order)

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
        reads = await self._read_spans([i.span for i in items])
        read_at = utcnow()
        out = []
        for ch, item in self.map.registers:
            block, pos = reads[item.span]
            if item.unavailable_in(block, pos, self.order):
                # The meter says it has no value: the channel is absent, never a number.
                log.warning("%s unit %s: %s not available", self.endpoint, self.device_id, ch)
                continue
            value = float(item.value(block, pos, self.order))
            out.append(RegisterValue(ch, value, item.unit or ch.unit, read_at))
        return out


class ModbusDriver(Driver):
    """``params``: ``map`` (model name or YAML path, required), ``device_id`` (unit id,
    default 1), ``byte_order`` (ABCD/CDAB/BADC/DCBA) or ``word_order`` (big/little):
    overrides the map default, as installations configure some meters or gateways."""

    protocol = "modbus"

    def __init__(self) -> None:
        self._maps: dict[tuple[Path, int], RegisterMap] = {}
        self._paths: dict[str | Path, Path] = {}  # a reference → its resolved file

    def register_map(self, ref: str | Path) -> RegisterMap:
        """Load (and cache until the file changes) a map; raises ``MapError``."""
        try:
            path = self._paths.get(ref)
            if path is None:
                path = self._paths[ref] = map_path(ref).resolve()
            key = (path, os.stat(path).st_mtime_ns)
        except OSError:
            self._paths.pop(ref, None)
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
        pipeline = params.get("pipeline", regmap.pipeline)
        if (
            isinstance(pipeline, bool)
            or not isinstance(pipeline, int)
            or not 1 <= pipeline <= MAX_PIPELINE
        ):
            raise ValueError(
                f"modbus: pipeline {pipeline!r} is not a request count 1..{MAX_PIPELINE}"
            )
        session = ModbusSession(endpoint, credentials, timeout, regmap, device_id, order, pipeline)
        if params.get("register_max") is not None:
            session.register_max = float(params["register_max"])
        try:
            async with asyncio.timeout(timeout):  # no task per connect
                await session._open()
        except TimeoutError as exc:
            await session.close()
            raise MeterTimeout(
                f"connect/login to {endpoint}: no answer within {timeout:g} s", endpoint=endpoint
            ) from exc
        except BaseException:
            await session.close()
            raise
        return session
