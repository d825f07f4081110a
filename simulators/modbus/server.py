"""A Modbus TCP server for :class:`~simulators.meter.SimulatedMeter` objects.

Why not pymodbus' own server: a meter's register image here is computed from the simulated
meter at the moment of each request (clock, registers, a profile window chosen by a
selector), login state and the profile selector belong to one TCP connection, and faults act
on the answer itself (no answer, dropped connection, damaged frame). pymodbus' server keeps
one datastore shared by every connection, its ``SimDevice`` action callbacks do not know
which connection asked, and it offers no hook to withhold or damage an answer.

The framing is written here with ``struct`` (MBAP header; function codes 3, 4, 6 and 16 and
exception answers are a few fixed fields): pymodbus' ``FramerSocket``, ``DecodePDU`` and
response classes were a third of this simulator's CPU per session, which must stay well
under the collector's (``benchmarks/README.md``, "Protocol CPU per session"). Requests that
arrive together (a client pipelining them) are answered in order in one write. Answers are
assembled from each item's bytes (``Field.wire``), the profile window's once per change.
The simulator is checked against pymodbus' client (``tests/simulators/test_modbus_sim.py``).

Register values come from :mod:`simulators.modbus.image`, which reads the map files and
encodes values on its own (``struct`` and the byte-order patterns), not with the driver's
register-map code: a decoding mistake in the driver shows up as a failing test.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pymodbus.constants import ExcCodes

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
HEADER = struct.Struct(">HHHB")  # transaction id, protocol id, length, unit id
ADDRESS_COUNT = struct.Struct(">HH")
ANSWER_HEADER = struct.Struct(">HHHBBB")  # MBAP + function code + byte count
ECHO = struct.Struct(">HHHBBHH")  # MBAP + function code + address + count/value
ACCESS = ("password", "level")
CHANNELS = {ch.value: ch for ch in Channel}


@dataclass(frozen=True)
class _Slot:
    """An item of the register space: where, and what fills it (``kind``)."""

    address: int
    end: int
    kind: str  # password, level, identity, clock, status, energy, period, depth, selector, window
    field: Field | None = None
    name: str = ""  # identity field
    channel: Channel | None = None


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
        # Per meter: (what the window shows depends on, the meter, the window's bytes).
        self._windows: dict[int, tuple[tuple[object, ...], SimulatedMeter, bytes]] = {}
        self._slots = _slots(regmap)
        self._touching: dict[tuple[str, int, int], tuple[_Slot, ...]] = {}

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.host, self.port)

    async def start(self, host: str, port: int) -> None:
        self._warm()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._connection, host, port)
        self.host, self.port = self._server.sockets[0].getsockname()[:2]

    def _warm(self) -> None:
        """Sum each meter's registers and compute its recent intervals before serving, as a
        long-running simulator has (the meter then advances them per closed interval): else
        every meter's first session carries that one-off work."""
        for meter in self.meters.values():
            meter.registers()
            now = meter.real_now()
            meter.profile(now - meter.capture_period * 2, now)

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
        self, conn: _Connection, dev_id: int, pdu: bytes
    ) -> tuple[SimulatedMeter | None, bytes]:
        """The answer PDU to one request, before any fault acts on it."""
        meter = self.meters.get(dev_id)
        fc = pdu[0] & 0x7F if pdu else 0
        if meter is None:
            # A gateway with nothing behind this unit id: "target device failed to respond".
            return None, bytes((fc | 0x80, ExcCodes.GATEWAY_NO_RESPONSE))
        try:
            return meter, self._handle(meter, conn.unit(dev_id), fc, pdu)
        except _Refused as refused:
            return meter, bytes((fc | 0x80, refused.code))

    def _frame(
        self,
        conn: _Connection,
        meter: SimulatedMeter | None,
        pdu: bytes,
        dev_id: int,
        tid: int,
        action: FaultAction,
    ) -> bytes | None:
        """The frame to send for ``action`` (None: none; DROP is the caller's)."""
        if action is FaultAction.SILENT:
            return None
        frame = HEADER.pack(tid, 0, len(pdu) + 1, dev_id) + pdu
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

    def _handle(self, meter: SimulatedMeter, state: _UnitState, fc: int, pdu: bytes) -> bytes:
        if fc in (3, 4):
            if len(pdu) != 5:
                raise _Refused(ExcCodes.ILLEGAL_VALUE)
            address, count = ADDRESS_COUNT.unpack_from(pdu, 1)
            if not 1 <= count <= 125:
                raise _Refused(ExcCodes.ILLEGAL_VALUE)
            data = self._read(meter, state, "holding" if fc == 3 else "input", address, count)
            return bytes((fc, 2 * count)) + data
        if fc == 16:
            if len(pdu) < 6:
                raise _Refused(ExcCodes.ILLEGAL_VALUE)
            address, count = ADDRESS_COUNT.unpack_from(pdu, 1)
            if not 1 <= count <= 123 or pdu[5] != 2 * count or len(pdu) != 6 + 2 * count:
                raise _Refused(ExcCodes.ILLEGAL_VALUE)
            self._write(meter, state, address, list(struct.unpack_from(f">{count}H", pdu, 6)))
            return pdu[:5]  # function code, address, count
        if fc == 6:
            if len(pdu) != 5:
                raise _Refused(ExcCodes.ILLEGAL_VALUE)
            address, value = ADDRESS_COUNT.unpack_from(pdu, 1)
            self._write(meter, state, address, [value])
            return pdu  # the request echoed
        raise _Refused(ExcCodes.ILLEGAL_FUNCTION)

    def _slots_in(self, function: str, start: int, stop: int) -> tuple[_Slot, ...]:
        key = (function, start, stop)
        found = self._touching.get(key)
        if found is None:
            found = tuple(s for s in self._slots[function] if s.address < stop and s.end > start)
            if len(self._touching) > 4096:
                self._touching.clear()
            self._touching[key] = found
        return found

    def _read(
        self, meter: SimulatedMeter, state: _UnitState, function: str, start: int, count: int
    ) -> bytes:
        """The registers [start, start + count) of ``function``, as they travel."""
        stop = start + count
        slots = self._slots_in(function, start, stop)
        covered = sum(min(s.end, stop) - max(s.address, start) for s in slots)
        login_block = all(s.kind in ACCESS for s in slots)
        if state.level < AccessLevel.READ and not (login_block and covered == count):
            raise _Refused(self.map.access_denied)  # only the login block reads before login
        if covered != count:
            raise _Refused(ExcCodes.ILLEGAL_ADDRESS)
        parts = []
        energy = None
        for slot in slots:
            kind, f = slot.kind, slot.field
            if kind == "window":
                data = self._window(meter, state)
            elif kind == "clock":
                data = self.map.clock.wire(meter.clock())  # type: ignore[union-attr]
            elif kind == "energy":
                if energy is None:
                    energy = meter.registers()
                data = f.wire(energy[slot.channel])  # type: ignore[index,union-attr]
            elif kind == "identity":
                data = f.wire(getattr(meter.identity, slot.name))  # type: ignore[union-attr]
            elif kind == "password":
                data = bytes(2 * (slot.end - slot.address))  # the password reads back as NULs
            elif kind == "level":
                data = f.wire(state.level)  # type: ignore[union-attr]
            elif kind == "period":
                data = f.wire(int(meter.capture_period.total_seconds()))  # type: ignore[union-attr]
            elif kind == "depth":
                data = f.wire(meter.depth)  # type: ignore[union-attr]
            elif kind == "selector":
                data = f.wire(state.selector or 0)  # type: ignore[union-attr]
            else:  # clock status
                data = f.wire(0)  # type: ignore[union-attr]
            if slot.address < start or slot.end > stop:
                data = data[
                    2 * max(0, start - slot.address) : 2 * (min(stop, slot.end) - slot.address)
                ]
            parts.append(data)
        return b"".join(parts)

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

    # --- the profile window --------------------------------------------------------------

    def _window(self, meter: SimulatedMeter, state: _UnitState) -> bytes:
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

    def _window_now(self, meter: SimulatedMeter, state: _UnitState) -> bytes:
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
        parts: list[bytes] = []
        for k, e in enumerate(entries):
            stamp = e.end if p.stamp == "end" else e.start
            values = {"timestamp": meter_seconds(stamp, tz), "status": int(e.status)}
            if totals:  # the registers at capture, as a counter of the field's width
                for f in p.fields:
                    ch = CHANNELS.get(f.name)
                    if ch is not None and ch in totals:
                        values[f.name] = f.wrap(totals[ch][k])
            else:
                values.update({ch.value: v for ch, v in e.values.items()})
            parts.append(p.record(values))
        parts.append(p.record({}) * (p.records - len(entries)))  # empty slots: every field 0
        return b"".join(parts)


def _slots(m: SimMap) -> dict[str, list[_Slot]]:
    """Every item of the map by register type, in address order."""
    out: dict[str, list[_Slot]] = {"holding": [], "input": []}

    def add(f: Field, kind: str, **more: object) -> None:
        out[f.function].append(_Slot(f.address, f.end, kind, f, **more))  # type: ignore[arg-type]

    if m.password:
        add(m.password, "password")
    if m.level:
        add(m.level, "level")
    for name, f in m.identity.items():
        if isinstance(f, Field):
            add(f, "identity", name=name)
    if c := m.clock:
        out["holding"].append(_Slot(c.address, c.address + c.size, "clock"))
        if c.status:
            add(c.status, "status")
    for ch, f in m.registers.items():
        add(f, "energy", channel=Channel(ch))
    if p := m.profile:
        add(p.capture_period, "period")
        add(p.depth, "depth")
        add(p.selector, "selector")
        out[p.function].append(_Slot(p.address, p.address + p.window_size, "window"))
    for slots in out.values():
        slots.sort(key=lambda s: s.address)
    return out


class _ModbusConnection(asyncio.Protocol):
    """One client connection: MBAP frames split as bytes arrive and answered at once, in
    order, in the loop's callback (no task or stream per request); the answers to requests
    that arrived together go out in one write. An answer that must wait (latency, jitter)
    is answered by a task of the connection's own, and the requests after it wait in the
    buffer until it is done."""

    def __init__(self, sim: ModbusSimulator) -> None:
        self.sim = sim
        level = 0 if sim.map.password is not None else int(AccessLevel.CONFIGURE)
        self.conn = _Connection(open_level=level)
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self.out: list[bytes] = []

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
        self.buffer = self.buffer + data if self.buffer else data
        if self.task is None:
            self._process()

    def _next(self) -> tuple[int, int, bytes] | None:
        """The next whole request in the buffer, or None (and hang up on non-Modbus)."""
        buf = self.buffer
        if len(buf) < 7:
            return None
        tid, protocol, length, dev_id = HEADER.unpack_from(buf)
        if protocol != 0 or not 2 <= length <= 254:
            self._close()  # not Modbus: hang up like a device does
            return None
        end = 6 + length
        if len(buf) < end:
            return None
        self.buffer = buf[end:]
        return dev_id, tid, buf[7:end]

    def _process(self) -> None:
        try:
            while (request := self._next()) is not None:
                dev_id, tid, pdu = request
                meter, answer = self.sim._prepare(self.conn, dev_id, pdu)
                if meter is not None and (meter.faults.latency or meter.faults.jitter):
                    self.task = asyncio.get_running_loop().create_task(
                        self._answer_later(meter, answer, dev_id, tid)
                    )
                    self.sim._tasks.add(self.task)
                    return
                action = meter.faults.decide(self.conn.unit(dev_id).answered) if meter else None
                if not self._send(meter, answer, dev_id, tid, action or FaultAction.ANSWER):
                    return
        finally:
            self._flush()

    async def _answer_later(
        self, meter: SimulatedMeter, answer: bytes, dev_id: int, tid: int
    ) -> None:
        task = self.task
        try:
            action = await meter.faults.before_answer(self.conn.unit(dev_id).answered)
            sent = self._send(meter, answer, dev_id, tid, action)
            self._flush()
            if not sent:
                return
        finally:
            self.sim._tasks.discard(task)  # type: ignore[arg-type]
            self.task = None
        if self.transport is not None and not self.transport.is_closing():
            self._process()

    def _send(
        self,
        meter: SimulatedMeter | None,
        answer: bytes,
        dev_id: int,
        tid: int,
        action: FaultAction,
    ) -> bool:
        if action is FaultAction.DROP:
            self._close()
            return False
        frame = self.sim._frame(self.conn, meter, answer, dev_id, tid, action)
        if frame is not None:
            self.out.append(frame)
        return True

    def _flush(self) -> None:
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def _close(self) -> None:
        self._flush()  # what was answered before goes out first
        if self.transport is not None:
            self.transport.close()
        self.buffer = b""


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
