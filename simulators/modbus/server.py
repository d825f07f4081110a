"""A Modbus TCP server for :class:`~simulators.meter.SimulatedMeter` objects.

Why not pymodbus' own server: a meter's register image here is computed from the simulated
meter at the moment of each request (clock, registers, a profile window chosen by a
selector), login state and the profile selector belong to one TCP connection, and faults act
on the answer itself (no answer, dropped connection, damaged frame). pymodbus' server keeps
one datastore shared by every connection, its ``SimDevice`` action callbacks do not know
which connection asked, and it offers no hook to withhold or damage an answer. So this is a
small asyncio server that still speaks Modbus through pymodbus' own classes: ``FramerSocket``
splits and builds MBAP frames, ``DecodePDU`` parses requests, and the response PDUs are
pymodbus' ``Read*RegistersResponse``, ``Write*Response`` and ``ExceptionResponse``.

Register values come from :mod:`simulators.modbus.image`, which reads the map files and
encodes values on its own (``struct`` and the byte-order patterns), not with the driver's
register-map code: a decoding mistake in the driver shows up as a failing test.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerSocket
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    ReadInputRegistersResponse,
    WriteMultipleRegistersResponse,
    WriteSingleRegisterResponse,
)

from drivers.base import AccessLevel, Channel, Endpoint
from simulators.meter import FaultAction, SimulatedMeter
from simulators.modbus.image import (
    Field,
    SimMap,
    from_meter_seconds,
    meter_seconds,
    read_map,
)

CorruptMode = Literal["length", "function"]


@dataclass
class _UnitState:
    """What one TCP connection has done with one unit id: login level, selector, answers."""

    level: int = 0  # maps without ``access`` start every connection at level 2
    selector: int | None = None
    answered: int = 0


@dataclass
class _Connection:
    units: dict[int, _UnitState] = field(default_factory=dict)
    open_level: int = 0

    def unit(self, device_id: int) -> _UnitState:
        return self.units.setdefault(device_id, _UnitState(level=self.open_level))


class _Refused(Exception):
    """Answer the request with this Modbus exception code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class ModbusSimulator:
    """A running simulator: ``host``/``port`` to connect to, ``await stop()`` to end it."""

    def __init__(
        self, meters: Mapping[int, SimulatedMeter], regmap: SimMap, corrupt: CorruptMode
    ) -> None:
        self.meters = dict(meters)
        self.map = regmap
        self.corrupt: CorruptMode = corrupt
        self.host = ""
        self.port = 0
        self.connections = 0  # accepted so far, for tests
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.BaseTransport] = set()  # open connections
        # Per meter: (what the window shows depends on, the meter, the window's registers).
        self._windows: dict[int, tuple[tuple[object, ...], SimulatedMeter, dict[int, int]]] = {}

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.host, self.port)

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._connection, host, port)
        self.host, self.port = self._server.sockets[0].getsockname()[:2]

    async def stop(self) -> None:
        """Stop listening, close every connection and wait for the handlers to end."""
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)
        self._server = None

    async def __aenter__(self) -> ModbusSimulator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- connection loop -----------------------------------------------------------------

    def _connection(self) -> asyncio.Protocol:
        return _ModbusConnection(self)

    def _prepare(
        self, conn: _Connection, dev_id: int, pdu_bytes: bytes, decoder: DecodePDU
    ) -> tuple[SimulatedMeter | None, ModbusPDU]:
        """The response PDU to one request, before any fault acts on it."""
        meter = self.meters.get(dev_id)
        fc = pdu_bytes[0] & 0x7F if pdu_bytes else 0
        if meter is None:
            # A gateway with nothing behind this unit id: "target device failed to respond".
            return None, ExceptionResponse(fc, ExcCodes.GATEWAY_NO_RESPONSE)
        request = decoder.decode(pdu_bytes) if pdu_bytes else None
        if request is None:
            return meter, ExceptionResponse(fc, ExcCodes.ILLEGAL_FUNCTION)
        try:
            return meter, self._handle(meter, conn.unit(dev_id), request)
        except _Refused as refused:
            return meter, ExceptionResponse(fc, refused.code)

    def _frame(
        self,
        framer: FramerSocket,
        conn: _Connection,
        meter: SimulatedMeter | None,
        response: ModbusPDU,
        dev_id: int,
        tid: int,
        action: FaultAction,
    ) -> bytes | None:
        """The frame to send for ``action`` (None: none; DROP is the caller's)."""
        if action is FaultAction.SILENT:
            return None
        response.dev_id, response.transaction_id = dev_id, tid
        frame = framer.buildFrame(response)
        if action is FaultAction.CORRUPT:
            frame = self._damage(frame)
        if meter is not None:
            conn.unit(dev_id).answered += 1
        return frame

    def _damage(self, frame: bytes) -> bytes:
        """A damaged answer: an MBAP length one short, or a function code no request had."""
        if self.corrupt == "length":
            length = int.from_bytes(frame[4:6], "big") - 1
            return frame[:4] + length.to_bytes(2, "big") + frame[6:]
        return frame[:7] + bytes([0x2B ^ frame[7]]) + frame[8:]

    # --- requests ------------------------------------------------------------------------

    def _handle(self, meter: SimulatedMeter, state: _UnitState, request: ModbusPDU) -> ModbusPDU:
        fc = request.function_code
        if fc in (3, 4):
            return self._read(meter, state, fc, request.address, request.count)
        if fc == 16:
            self._write(meter, state, request.address, list(request.registers))
            return WriteMultipleRegistersResponse(address=request.address, count=request.count)
        if fc == 6:
            self._write(meter, state, request.address, list(request.registers))
            return WriteSingleRegisterResponse(
                address=request.address, registers=list(request.registers)
            )
        raise _Refused(ExcCodes.ILLEGAL_FUNCTION)

    def _read(
        self, meter: SimulatedMeter, state: _UnitState, fc: int, address: int, count: int
    ) -> ModbusPDU:
        function = "holding" if fc == 3 else "input"
        wanted = range(address, address + count)
        access = self._access_image(state)
        if all(a in access for a in wanted) and function == "holding":
            return ReadHoldingRegistersResponse(registers=[access[a] for a in wanted])
        if state.level < AccessLevel.READ:
            raise _Refused(self.map.access_denied)
        image = self._image(meter, state, function, wanted)
        if any(a not in image for a in wanted):
            raise _Refused(ExcCodes.ILLEGAL_ADDRESS)
        cls = ReadHoldingRegistersResponse if fc == 3 else ReadInputRegistersResponse
        return cls(registers=[image[a] for a in wanted])

    def _write(
        self, meter: SimulatedMeter, state: _UnitState, address: int, regs: list[int]
    ) -> None:
        m = self.map
        if m.password and address == m.password.address and len(regs) == m.password.size:
            secret = str(m.password.decode(regs))
            level = meter.secrets.level_for(secret)
            state.level = int(level or 0)  # a failed login also locks the connection
            if level is None:
                raise _Refused(m.auth_failed)
            return
        if m.clock and address == m.clock.address and len(regs) == m.clock.size:
            if state.level < AccessLevel.CONFIGURE:
                raise _Refused(m.access_denied)
            try:
                when = m.clock.decode(regs)
            except (ValueError, OverflowError) as exc:
                raise _Refused(ExcCodes.ILLEGAL_VALUE) from exc
            meter.set_clock(when)
            return
        p = m.profile
        if p and address == p.selector.address and len(regs) == p.selector.size:
            if state.level < AccessLevel.READ:
                raise _Refused(m.access_denied)
            state.selector = int(p.selector.decode(regs))
            return
        if state.level < AccessLevel.READ:
            raise _Refused(m.access_denied)
        raise _Refused(ExcCodes.ILLEGAL_ADDRESS)

    # --- register images -----------------------------------------------------------------

    def _access_image(self, state: _UnitState) -> dict[int, int]:
        """The login block, readable before login (the password reads back as NULs)."""
        m = self.map
        image: dict[int, int] = {}
        if m.password:
            _put(image, m.password, "")
        if m.level:
            _put(image, m.level, state.level)
        return image

    def _image(
        self, meter: SimulatedMeter, state: _UnitState, function: str, wanted: range
    ) -> dict[int, int]:
        """Every register of ``function`` that ``wanted`` touches, computed now."""
        m = self.map
        image = self._access_image(state) if function == "holding" else {}

        def touches(item: Field) -> bool:
            return (
                item.function == function
                and item.address < wanted.stop
                and (item.end > wanted.start)
            )

        ident = meter.identity
        for name, item in m.identity.items():
            if isinstance(item, Field) and touches(item):
                _put(image, item, getattr(ident, name))
        c = m.clock
        if (
            c
            and function == "holding"
            and c.address < wanted.stop
            and c.address + c.size > wanted.start
        ):
            for k, v in enumerate(c.encode(meter.clock())):
                image[c.address + k] = v
        if c and c.status and touches(c.status):
            _put(image, c.status, 0)
        energy = [(ch, item) for ch, item in m.registers.items() if touches(item)]
        if energy:
            values = meter.registers()
            for ch, item in energy:
                _put(image, item, values[Channel(ch)])
        if p := m.profile:
            cfg = meter.profile_config()
            if touches(p.capture_period):
                _put(image, p.capture_period, int(cfg.capture_period.total_seconds()))
            if touches(p.depth):
                _put(image, p.depth, cfg.depth)
            if touches(p.selector):
                _put(image, p.selector, state.selector or 0)
            if (
                p.function == function
                and p.address < wanted.stop
                and (p.address + p.window_size > wanted.start)
            ):
                image.update(self._window(meter, state))
        return image

    def _window(self, meter: SimulatedMeter, state: _UnitState) -> dict[int, int]:
        """The profile window, remembered per meter until something it shows changes.

        The driver reads a window in several requests, and a cycle reads every meter's same
        hour: encoding the window's records once per change instead of once per read was
        most of this simulator's CPU per session. The key holds everything the records
        depend on: the selector, the current interval, the memory holes, divergence, reset,
        clock settings and the load parameters.
        """
        faults = meter.faults
        period = int(meter.capture_period.total_seconds())
        key = (
            state.selector,
            int(meter.real_now().timestamp()) // period,
            period,
            meter.depth,
            tuple(faults.missing),
            faults.divergence_pct,
            faults.register_reset_at,
            len(meter.clock_adjustments),
            meter.mean_kw,
            meter.seed,
            meter.generator,
        )
        cached = self._windows.get(id(meter))
        if cached is None or cached[0] != key or cached[1] is not meter:
            cached = self._windows[id(meter)] = (key, meter, self._window_now(meter, state))
        return cached[2]

    def _window_now(self, meter: SimulatedMeter, state: _UnitState) -> dict[int, int]:
        """The profile window: records whose timestamp is ≥ the selector, oldest first."""
        p = self.map.profile
        assert p is not None and self.map.clock is not None
        tz = self.map.clock.tz
        period = meter.capture_period
        entries = []
        if state.selector is not None:
            at = from_meter_seconds(state.selector, tz)
            first_start = at - period if p.stamp == "end" else at
            newest = meter.real_now() + period
            span = period * p.records * 2  # widened while holes leave the window short
            while True:
                entries = meter.profile(first_start, min(first_start + span, newest))
                if len(entries) >= p.records or first_start + span >= newest:
                    break
                span *= 4
            entries = entries[: p.records]
        totals = meter.register_values([e.end for e in entries]) if p.values != "interval" else {}
        image: dict[int, int] = {}
        for k in range(p.records):
            base = p.address + k * p.record_size
            values: dict[str, float | int] = {}  # an empty slot: every field 0
            if k < len(entries):
                e = entries[k]
                stamp = e.end if p.stamp == "end" else e.start
                values = {"timestamp": meter_seconds(stamp, tz), "status": int(e.status)}
                if totals:  # the registers at capture, as a counter of the field's width
                    values.update({ch.value: v[k] for ch, v in totals.items()})
                else:
                    values.update({ch.value: v for ch, v in e.values.items()})
            for f in p.fields:
                value = values.get(f.name, 0)
                _put(image, f, f.wrap(value) if totals and f.name in values else value, base)
        return image


class _ModbusConnection(asyncio.Protocol):
    """One client connection: MBAP frames split by pymodbus' ``FramerSocket`` as bytes
    arrive and answered at once, in order, in the loop's callback (no task or stream per
    request). An answer that must wait (latency, jitter) is answered by a task of the
    connection's own, and the requests after it wait in the buffer until it is done."""

    def __init__(self, sim: ModbusSimulator) -> None:
        self.sim = sim
        self.framer = FramerSocket(DecodePDU(True))
        level = 0 if sim.map.password is not None else int(AccessLevel.CONFIGURE)
        self.conn = _Connection(open_level=level)
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.sim.connections += 1
        self.sim._writers.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.sim._writers.discard(self.transport)
        if self.task is not None:
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.task is None:
            self._process()

    def _next(self) -> tuple[int, int, bytes] | None:
        """The next whole request in the buffer, or None (and hang up on non-Modbus)."""
        if not self.buffer:
            return None
        used, dev_id, tid, pdu_bytes = self.framer.decode(self.buffer)
        if not used:
            if len(self.buffer) >= 8 and self.buffer[2:4] != b"\x00\x00":
                self._close()  # not Modbus (protocol id ≠ 0): hang up like a device does
            return None
        self.buffer = self.buffer[used:]
        return dev_id, tid, pdu_bytes

    def _process(self) -> None:
        while (request := self._next()) is not None:
            dev_id, tid, pdu_bytes = request
            meter, response = self.sim._prepare(self.conn, dev_id, pdu_bytes, self.framer.decoder)
            if meter is not None and (meter.faults.latency or meter.faults.jitter):
                self.task = asyncio.get_running_loop().create_task(
                    self._answer_later(meter, response, dev_id, tid)
                )
                self.sim._tasks.add(self.task)
                return
            action = meter.faults.decide(self.conn.unit(dev_id).answered) if meter else None
            if not self._send(meter, response, dev_id, tid, action or FaultAction.ANSWER):
                return

    async def _answer_later(
        self, meter: SimulatedMeter, response: ModbusPDU, dev_id: int, tid: int
    ) -> None:
        task = self.task
        try:
            action = await meter.faults.before_answer(self.conn.unit(dev_id).answered)
            if not self._send(meter, response, dev_id, tid, action):
                return
        finally:
            self.sim._tasks.discard(task)  # type: ignore[arg-type]
            self.task = None
        if self.transport is not None and not self.transport.is_closing():
            self._process()

    def _send(
        self,
        meter: SimulatedMeter | None,
        response: ModbusPDU,
        dev_id: int,
        tid: int,
        action: FaultAction,
    ) -> bool:
        if action is FaultAction.DROP:
            self._close()
            return False
        frame = self.sim._frame(self.framer, self.conn, meter, response, dev_id, tid, action)
        if frame is not None and self.transport is not None:
            self.transport.write(frame)
        return True

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.buffer = b""


def _put(image: dict[int, int], item: Field, value: float | int | str, base: int = 0) -> None:
    for k, reg in enumerate(item.encode(value)):
        image[base + item.address + k] = reg


async def serve(
    meters: Mapping[int, SimulatedMeter],
    host: str = "127.0.0.1",
    port: int = 0,
    map: str | Path = "sim-4q",  # noqa: A002 - the connection parameter is called "map"
    *,
    corrupt: CorruptMode = "length",
) -> ModbusSimulator:
    """Serve ``meters`` (unit id → meter) on one port; port 0 picks a free one.

    ``map`` is a model name or a map file, the same value a driver connection takes.
    Stop with ``await handle.stop()`` or ``async with await serve(...) as handle:``.
    """
    for unit in meters:
        if not 1 <= unit <= 247:
            raise ValueError(f"unit id {unit} outside 1..247")
    sim = ModbusSimulator(meters, read_map(map), corrupt)
    await sim.start(host, port)
    return sim


__all__ = ["ModbusSimulator", "serve"]
