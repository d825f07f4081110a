"""Register maps: one YAML file per meter model, validated on load.

A map is data, not code, so that a new meter model needs only a new file. Validation is
strict and every error names the file and the field, because a wrong map silently turns
energy into garbage. The simulator reads the same YAML files with its own reader and encoder
(``simulators/modbus/image.py``), so a mistake here shows up as a disagreement in the tests.

Byte orders follow the usual letter notation for a 32-bit value whose big-endian bytes are
A B C D: ``ABCD`` (high word first, the Modbus convention), ``CDAB`` (low word first),
``BADC`` (high word first, bytes swapped in each register) and ``DCBA`` (fully little-endian).
For 64-bit values the pattern extends (CDAB → GH EF CD AB: registers reversed); for 16-bit
values only the byte swap matters.
"""

from __future__ import annotations

import functools
import math
import re
import struct
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

import yaml
from pymodbus.client.mixin import ModbusClientMixin

from drivers.base import Channel

DT = ModbusClientMixin.DATATYPE
MAPS_DIR = Path(__file__).parent / "maps"

Order = Literal["ABCD", "CDAB", "BADC", "DCBA"]
ORDERS: tuple[Order, ...] = ("ABCD", "CDAB", "BADC", "DCBA")
WORD_ORDERS: dict[str, Order] = {"big": "ABCD", "little": "CDAB"}  # the older spelling
Function = Literal["holding", "input"]

TYPES: dict[str, DT] = {
    "uint16": DT.UINT16,
    "int16": DT.INT16,
    "uint32": DT.UINT32,
    "int32": DT.INT32,
    "uint64": DT.UINT64,
    "int64": DT.INT64,
    "float32": DT.FLOAT32,
    "float64": DT.FLOAT64,
    "string": DT.STRING,
}
FUNCTION_CODES: dict[str, int] = {"holding": 3, "input": 4}
CLOCK_FIELDS = ("year", "month", "day", "hour", "minute", "second")
IDENTITY_FIELDS = ("serial", "manufacturer", "model", "firmware")
EPOCH = datetime(1970, 1, 1)  # naive: meter epochs count on the meter's own wall clock
MAX_READ = 125  # Modbus limit for one FC3/FC4 request
MAX_PIPELINE = 16  # requests in flight on one connection, at most


class MapError(ValueError):
    """A register map that cannot be used; the message names the file and the field."""


def to_big_endian(regs: list[int], order: Order) -> list[int]:
    """Registers in ``order`` → the same value's registers in ABCD order (and back: both
    steps are their own inverse)."""
    out = list(reversed(regs)) if order in ("CDAB", "DCBA") else list(regs)
    if order in ("BADC", "DCBA"):
        out = [((r & 0xFF) << 8) | (r >> 8) for r in out]
    return out


# Decoding without reordering registers one by one: ABCD is big-endian and DCBA
# little-endian as the bytes travel; BADC and CDAB are the same two once the bytes of each
# register are swapped (BADC → ABCD, CDAB → DCBA), for 16-, 32- and 64-bit values alike.
# So a block is decoded by one ``struct`` call per value, on its bytes or on its
# pair-swapped bytes (measured: a quarter of the cost of reordering registers and calling
# pymodbus' ``convert_from_registers`` for each value).
LAYOUT: dict[str, tuple[bool, str]] = {
    "ABCD": (False, ">"),
    "DCBA": (False, "<"),
    "BADC": (True, ">"),
    "CDAB": (True, "<"),
    "big": (False, ">"),  # the older spelling
    "little": (True, "<"),
}
_CODES = {
    "uint16": "H",
    "int16": "h",
    "uint32": "I",
    "int32": "i",
    "uint64": "Q",
    "int64": "q",
    "float32": "f",
    "float64": "d",
}
_STRUCTS = {(t, e): struct.Struct(e + c) for t, c in _CODES.items() for e in "<>"}
_RAW = {(n, e): struct.Struct(e + c) for n, c in ((1, "H"), (2, "I"), (4, "Q")) for e in "<>"}


def swap_pairs(data: bytes) -> bytes:
    """The bytes of each 16-bit register swapped (one C pass)."""
    regs = array("H", data)
    regs.byteswap()
    return regs.tobytes()


class Block:
    """The data bytes of one read answer (2 per register, as they travel), decoded in
    place: ``view`` gives them as they are or pair-swapped (computed once)."""

    __slots__ = ("raw", "_swapped")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._swapped: bytes | None = None

    @classmethod
    def of(cls, regs: Iterable[int]) -> Block:
        regs = list(regs)
        return cls(struct.pack(f">{len(regs)}H", *regs))

    def view(self, order: str) -> tuple[bytes, str]:
        swap, endian = LAYOUT[order]
        if not swap:
            return self.raw, endian
        if self._swapped is None:
            self._swapped = swap_pairs(self.raw)
        return self._swapped, endian

    def registers(self, pos: int, count: int) -> tuple[int, ...]:
        return struct.unpack_from(f">{count}H", self.raw, pos)


def parse_order(value: Any) -> Order:
    """``ABCD``/``CDAB``/``BADC``/``DCBA``, or the older ``big``/``little``; ValueError else."""
    if value in ORDERS:
        return value  # type: ignore[no-any-return]
    if value in WORD_ORDERS:
        return WORD_ORDERS[value]
    raise ValueError(f"{value!r} is not one of {', '.join(ORDERS)} (or big, little)")


@dataclass(frozen=True)
class Item:
    """One value in the register space: where it is, how it is encoded, how it scales."""

    name: str
    address: int
    type: str
    function: Function = "holding"
    length: int = 0  # registers, strings only
    scaler: float = 1.0
    unit: str | None = None
    order: Order | None = None  # None: the map (or connection) default
    not_available: int | None = None  # raw bit pattern the meter sends for "no value"

    @functools.cached_property
    def size(self) -> int:
        return self.length if self.type == "string" else TYPES[self.type].value[1]

    @functools.cached_property
    def end(self) -> int:
        return self.address + self.size

    @functools.cached_property
    def span(self) -> tuple[Function, int, int]:
        """(function, address, registers): what a read of this item asks for."""
        return (self.function, self.address, self.size)

    @functools.cached_property
    def digits(self) -> int:
        """Decimals the scaler keeps (rounding away binary noise of integer × scaler)."""
        return max(0, math.ceil(-math.log10(abs(self.scaler))))

    def unavailable(self, regs: list[int], order: Order) -> bool:
        """True when the registers hold the meter's "not available" pattern (ABB: all ones)."""
        return self.unavailable_in(Block.of(regs), 0, order)

    def unavailable_in(self, block: Block, pos: int, order: Order) -> bool:
        if self.not_available is None:
            return False
        data, endian = block.view(self.order or order)
        return bool(_RAW[(self.size, endian)].unpack_from(data, pos)[0] == self.not_available)

    def decode(self, regs: list[int], order: Order) -> float | int | str:
        """Registers → value, scaler applied (strings lose trailing NULs and blanks)."""
        return self.value(Block.of(regs), 0, order)

    def value(self, block: Block, pos: int, order: Order) -> float | int | str:
        """The value whose registers start at byte ``pos`` of ``block``, scaler applied."""
        if self.type == "string":
            raw = block.raw[pos : pos + 2 * self.length]
            return raw.rstrip(b"\x00 ").decode("ascii", errors="replace")
        data, endian = block.view(self.order or order)
        value = _STRUCTS[(self.type, endian)].unpack_from(data, pos)[0]
        if self.scaler == 1:
            return value  # type: ignore[no-any-return]
        if self.type.startswith("float"):
            return value * self.scaler  # type: ignore[no-any-return]
        # Round away binary noise (123456789 × 0.001 → 123456.789, not …78900000001).
        return round(value * self.scaler, self.digits)

    def encode(self, value: float | int | str, order: Order) -> list[int]:
        """Value → registers; the inverse of :meth:`decode` (used for writes)."""
        if self.type == "string":
            raw = str(value).encode("ascii", errors="replace")[: self.length * 2]
            raw = raw.ljust(self.length * 2, b"\x00")
            return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
        raw_value: float | int = value / self.scaler if self.scaler != 1 else value  # type: ignore[operator]
        if not self.type.startswith("float"):
            raw_value = int(round(raw_value))
        regs = ModbusClientMixin.convert_to_registers(raw_value, TYPES[self.type], word_order="big")
        return to_big_endian(regs, self.order or order)


@dataclass(frozen=True)
class ClockSpec:
    """The meter clock: a block of fields or one POSIX counter, in the meter's time zone."""

    layout: Literal["fields", "posix"]
    address: int
    function: Function
    tz: timezone
    type: str = "uint16"  # posix counter type; each field is a uint16
    status: Item | None = None

    @property
    def size(self) -> int:
        return len(CLOCK_FIELDS) if self.layout == "fields" else TYPES[self.type].value[1]

    def encode(self, when: datetime, order: Order) -> list[int]:
        local = when.astimezone(self.tz)
        if self.layout == "fields":
            return [getattr(local, f) for f in CLOCK_FIELDS]
        seconds = to_meter_epoch(when, self.tz)
        regs = ModbusClientMixin.convert_to_registers(seconds, TYPES[self.type], word_order="big")
        return to_big_endian(regs, order)

    def decode(self, regs: list[int], order: Order) -> datetime:
        """Registers → aware UTC datetime; raises ValueError on an impossible date."""
        return self.value(Block.of(regs), 0, order)

    def value(self, block: Block, pos: int, order: Order) -> datetime:
        if self.layout == "fields":
            fields = block.registers(pos, len(CLOCK_FIELDS))
            return datetime(*fields, tzinfo=self.tz).astimezone(UTC)  # type: ignore[misc]
        data, endian = block.view(order)
        seconds = _STRUCTS[(self.type, endian)].unpack_from(data, pos)[0]
        return from_meter_epoch(seconds, self.tz)


@dataclass(frozen=True)
class ProfileSpec:
    """Profile read-out: write a start time into ``selector``, read ``records`` from ``window``.

    The meter fills the window with the oldest records it holds whose timestamp is at or
    after the selector value; unused slots carry timestamp 0. Timestamps are seconds since
    1970-01-01 in the meter's clock zone and mark the interval ``stamp`` (end or start).
    """

    capture_period: Item
    depth: Item
    selector: Item
    address: int
    function: Function
    records: int
    timestamp: Item  # offset-relative: ``address`` is the offset inside a record
    status: Item | None
    channels: tuple[tuple[Channel, Item], ...]
    record_size: int
    stamp: Literal["end", "start"] = "end"
    # ``interval``: each record holds its interval's energy; ``cumulative``: each record holds
    # the energy registers at its capture, and intervals are their differences.
    values: Literal["interval", "cumulative"] = "interval"

    @property
    def window_size(self) -> int:
        return self.records * self.record_size


@dataclass(frozen=True)
class RegisterMap:
    """A validated meter model description."""

    source: str
    model: str
    manufacturer: str
    order: Order
    max_read: int
    password: Item | None  # None: the meter has no login (reads are open, nothing is written)
    level: Item | None
    auth_failed_code: int
    access_denied_code: int
    identity: Mapping[str, Item | str]  # an Item, or a constant the meter does not expose
    clock: ClockSpec | None  # None: no clock over Modbus (read_clock is NotSupported)
    registers: tuple[tuple[Channel, Item], ...]
    profile: ProfileSpec | None
    reference: Mapping[str, str]  # the vendor document and table the map was written from
    pipeline: int = 1  # requests the meter takes in flight on one connection (1: one at a time)

    @property
    def name(self) -> str:
        return Path(self.source).stem


def to_meter_epoch(when: datetime, tz: timezone) -> int:
    """Seconds since 1970-01-01T00:00 on the meter's wall clock (POSIX time when tz is UTC)."""
    naive = when.astimezone(tz).replace(tzinfo=None)
    return int((naive - EPOCH).total_seconds())


def from_meter_epoch(seconds: int, tz: timezone) -> datetime:
    """The inverse of :func:`to_meter_epoch`, as aware UTC."""
    return (EPOCH + timedelta(seconds=seconds)).replace(tzinfo=tz).astimezone(UTC)


# --- loading -----------------------------------------------------------------------------


def map_path(ref: str | Path) -> Path:
    """A model name (``sim-4q``) resolves to a shipped map; anything path-like is a path."""
    text = str(ref)
    if "/" in text or "\\" in text or text.endswith((".yaml", ".yml")):
        return Path(text)
    return MAPS_DIR / f"{text.lower()}.yaml"


def shipped_maps() -> list[str]:
    return sorted(p.stem for p in MAPS_DIR.glob("*.yaml"))


def load_map(ref: str | Path) -> RegisterMap:
    """Load and validate a map by model name or path; :class:`MapError` says what is wrong."""
    path = map_path(ref)
    if not path.is_file():
        hint = "" if isinstance(ref, Path) or "/" in str(ref) else f" (shipped: {shipped_maps()})"
        raise MapError(f"{path}: register map not found{hint}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise MapError(f"{path}: not valid YAML: {exc}") from exc
    return parse_map(data, str(path))


def parse_map(data: Any, source: str) -> RegisterMap:
    return _Parser(source).parse(data)


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.order: Order = "ABCD"
        self.function: Function = "holding"

    def fail(self, where: str, message: str) -> MapError:
        return MapError(f"{self.source}: {where}: {message}")

    def mapping(self, value: Any, where: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(where, f"expected a mapping, got {type(value).__name__}")
        return value

    def known(self, value: Mapping[str, Any], where: str, allowed: Iterable[str]) -> None:
        if extra := sorted(set(value) - set(allowed)):
            raise self.fail(f"{where}.{extra[0]}" if where else extra[0], "unknown field")

    def require(self, value: Mapping[str, Any], key: str, where: str) -> Any:
        if key not in value or value[key] is None:
            raise self.fail(f"{where}.{key}" if where else key, "required field is missing")
        return value[key]

    def integer(self, value: Any, where: str, lo: int, hi: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self.fail(where, f"expected an integer in {lo}..{hi}, got {value!r}")
        return value

    def choice(self, value: Any, where: str, options: Iterable[str]) -> str:
        options = tuple(options)
        if value not in options:
            raise self.fail(where, f"{value!r} is not one of {', '.join(options)}")
        return value

    def byte_order(self, spec: Mapping[str, Any], where: str, default: Order | None) -> Any:
        """``byte_order`` (ABCD, CDAB, BADC, DCBA) or the older ``word_order`` (big, little)."""
        if "byte_order" in spec and "word_order" in spec:
            raise self.fail(
                f"{where}.word_order" if where else "word_order",
                "give byte_order or word_order, not both",
            )
        key = "byte_order" if "byte_order" in spec else "word_order"
        if key not in spec:
            return default
        allowed = ORDERS if key == "byte_order" else tuple(WORD_ORDERS)
        value = self.choice(spec[key], f"{where}.{key}" if where else key, allowed)
        return parse_order(value)

    def item(self, raw: Any, where: str, *, name: str = "", offset: bool = False) -> Item:
        spec = self.mapping(raw, where)
        self.known(
            spec,
            where,
            (
                "address",
                "offset",
                "type",
                "function",
                "length",
                "scaler",
                "unit",
                "word_order",
                "byte_order",
                "not_available",
                "name",
            ),
        )
        key = "offset" if offset else "address"
        address = self.integer(self.require(spec, key, where), f"{where}.{key}", 0, 65535)
        dtype = self.choice(spec.get("type", "uint16"), f"{where}.type", TYPES)
        length = 0
        if dtype == "string":
            length = self.integer(self.require(spec, "length", where), f"{where}.length", 1, 64)
        elif "length" in spec:
            raise self.fail(f"{where}.length", "only strings take a length")
        scaler = spec.get("scaler", 1)
        if isinstance(scaler, bool) or not isinstance(scaler, int | float) or scaler == 0:
            raise self.fail(f"{where}.scaler", f"expected a non-zero number, got {scaler!r}")
        order = self.byte_order(spec, where, None)
        not_available = spec.get("not_available")
        if not_available is not None:
            bits = 16 * (TYPES[dtype].value[1] if dtype != "string" else 0)
            if dtype == "string" or isinstance(not_available, bool):
                raise self.fail(f"{where}.not_available", "only numbers have a not-available value")
            self.integer(not_available, f"{where}.not_available", 0, (1 << bits) - 1)
        function = self.choice(
            spec.get("function", self.function), f"{where}.function", FUNCTION_CODES
        )
        item = Item(
            where,
            address,
            dtype,
            function,
            length,
            float(scaler),  # type: ignore[arg-type]
            spec.get("unit"),
            order,
            not_available,
        )
        if item.end > 65536:
            raise self.fail(where, "runs past register 65535")
        return item

    def parse(self, data: Any) -> RegisterMap:
        top = self.mapping(data, "(top level)")
        self.known(
            top,
            "",
            (
                "model",
                "manufacturer",
                "description",
                "reference",
                "word_order",
                "byte_order",
                "function",
                "max_read",
                "pipeline",
                "access",
                "identity",
                "clock",
                "registers",
                "profile",
            ),
        )
        model = str(self.require(top, "model", ""))
        manufacturer = str(top.get("manufacturer", ""))
        self.order = self.byte_order(top, "", "ABCD")
        reference = self.reference(top.get("reference", {}))
        self.function = self.choice(top.get("function", "holding"), "function", FUNCTION_CODES)  # type: ignore[assignment]
        max_read = self.integer(top.get("max_read", MAX_READ), "max_read", 1, MAX_READ)
        pipeline = self.integer(top.get("pipeline", 1), "pipeline", 1, MAX_PIPELINE)

        password = level = None
        auth_failed, denied = 3, 1
        if top.get("access") is not None:
            access = self.mapping(top["access"], "access")
            self.known(access, "access", ("password", "level", "exceptions"))
            password = self.item(self.require(access, "password", "access"), "access.password")
            if password.type != "string" or password.function != "holding":
                raise self.fail("access.password", "must be a string in holding registers")
            if "level" in access:
                level = self.item(access["level"], "access.level")
            codes = self.mapping(access.get("exceptions", {}), "access.exceptions")
            self.known(codes, "access.exceptions", ("auth_failed", "access_denied"))
            auth_failed = self.integer(
                codes.get("auth_failed", 3), "access.exceptions.auth_failed", 1, 255
            )
            denied = self.integer(
                codes.get("access_denied", 1), "access.exceptions.access_denied", 1, 255
            )
            if auth_failed == denied:
                raise self.fail("access.exceptions", "auth_failed and access_denied must differ")

        ident_raw = self.mapping(self.require(top, "identity", ""), "identity")
        self.known(ident_raw, "identity", IDENTITY_FIELDS)
        self.require(ident_raw, "serial", "identity")
        defaults = {"manufacturer": manufacturer, "model": model, "firmware": ""}
        identity: dict[str, Item | str] = {}
        for field_name in IDENTITY_FIELDS:
            where = f"identity.{field_name}"
            raw = ident_raw.get(field_name, defaults.get(field_name))
            if isinstance(raw, str):
                identity[field_name] = raw
            else:
                item = self.item(raw, where, name=field_name)
                if item.type.startswith("float"):
                    raise self.fail(f"{where}.type", "identity fields are strings or integers")
                identity[field_name] = item

        clock = None
        if top.get("clock") is not None:
            clock = self.clock(self.mapping(top["clock"], "clock"))

        regs_raw = self.mapping(self.require(top, "registers", ""), "registers")
        self.known(regs_raw, "registers", (c.value for c in Channel))
        registers = []
        for ch in Channel:
            if ch.value in regs_raw:
                item = self.register(regs_raw[ch.value], f"registers.{ch.value}", ch)
                registers.append((ch, item))
        if not registers:
            raise self.fail("registers", "map at least one channel")

        profile = None
        if top.get("profile") is not None:
            profile = self.profile(self.mapping(top["profile"], "profile"))
            if clock is None:
                raise self.fail("profile", "profile timestamps need the clock (its time zone)")

        items: list[Item] = [i for i in (password, level) if i is not None]
        items += [i for i in identity.values() if isinstance(i, Item)]
        if clock is not None:
            items += [
                Item("clock", clock.address + k, "uint16", clock.function)
                for k in range(clock.size)
            ]
            items += [clock.status] if clock.status else []
        items += [i for _, i in registers]
        if profile:
            items += [profile.capture_period, profile.depth, profile.selector]
            items += [
                Item("profile.window", profile.address + k, "uint16", profile.function)
                for k in range(profile.window_size)
            ]
        self.no_overlap(items)
        return RegisterMap(
            self.source,
            model,
            manufacturer,
            self.order,
            max_read,
            password,
            level,
            auth_failed,
            denied,
            identity,
            clock,
            tuple(registers),
            profile,
            reference,
            pipeline,
        )

    def reference(self, raw: Any) -> dict[str, str]:
        spec = self.mapping(raw, "reference")
        self.known(spec, "reference", ("document", "table", "checked"))
        return {k: str(v) for k, v in spec.items()}

    def register(self, raw: Any, where: str, ch: Channel) -> Item:
        item = self.item(raw, where, name=ch.value)
        if item.type == "string":
            raise self.fail(f"{where}.type", "an energy register cannot be a string")
        if item.unit is not None and item.unit != ch.unit:
            raise self.fail(f"{where}.unit", f"{item.unit!r}: scale to {ch.unit} with 'scaler'")
        return item

    def clock(self, spec: Mapping[str, Any]) -> ClockSpec:
        self.known(
            spec, "clock", ("layout", "address", "function", "timezone", "type", "fields", "status")
        )
        layout = self.choice(spec.get("layout", "fields"), "clock.layout", ("fields", "posix"))
        address = self.integer(self.require(spec, "address", "clock"), "clock.address", 0, 65535)
        function = self.choice(
            spec.get("function", self.function), "clock.function", FUNCTION_CODES
        )
        if function != "holding":
            raise self.fail("clock.function", "the clock must be writable (holding registers)")
        tz = self.timezone(self.require(spec, "timezone", "clock"))
        dtype = "uint16"
        if layout == "posix":
            dtype = self.choice(spec.get("type", "uint32"), "clock.type", ("uint32", "uint64"))
        if layout == "fields" and list(spec.get("fields", CLOCK_FIELDS)) != list(CLOCK_FIELDS):
            raise self.fail("clock.fields", f"supported layout is {list(CLOCK_FIELDS)}")
        status = self.item(spec["status"], "clock.status") if "status" in spec else None
        return ClockSpec(layout, address, function, tz, dtype, status)  # type: ignore[arg-type]

    def timezone(self, value: Any) -> timezone:
        if value in ("UTC", "Z", "+00:00"):
            return UTC
        m = re.fullmatch(r"([+-])(\d\d):(\d\d)", str(value))
        if not m:
            raise self.fail("clock.timezone", f"{value!r}: use 'UTC' or a fixed offset '-05:00'")
        sign = -1 if m[1] == "-" else 1
        return timezone(sign * timedelta(hours=int(m[2]), minutes=int(m[3])))

    def profile(self, spec: Mapping[str, Any]) -> ProfileSpec:
        self.known(spec, "profile", ("capture_period", "depth", "selector", "window"))
        period = self.item(
            self.require(spec, "capture_period", "profile"), "profile.capture_period"
        )
        depth = self.item(self.require(spec, "depth", "profile"), "profile.depth")
        selector = self.item(self.require(spec, "selector", "profile"), "profile.selector")
        if selector.function != "holding" or selector.type not in ("uint32", "uint64"):
            raise self.fail("profile.selector", "must be a uint32/uint64 holding register")
        window = self.mapping(self.require(spec, "window", "profile"), "profile.window")
        keys = ("address", "function", "records", "stamp", "values", "fields")
        self.known(window, "profile.window", keys)
        address = self.integer(
            self.require(window, "address", "profile.window"), "profile.window.address", 0, 65535
        )
        function = self.choice(
            window.get("function", self.function), "profile.window.function", FUNCTION_CODES
        )
        records = self.integer(
            self.require(window, "records", "profile.window"), "profile.window.records", 1, MAX_READ
        )
        stamp = self.choice(window.get("stamp", "end"), "profile.window.stamp", ("end", "start"))
        values = self.choice(
            window.get("values", "interval"), "profile.window.values", ("interval", "cumulative")
        )
        if values == "cumulative" and stamp != "end":
            raise self.fail("profile.window.stamp", "cumulative records are stamped at the end")
        fields = self.require(window, "fields", "profile.window")
        if not isinstance(fields, list) or not fields:
            raise self.fail("profile.window.fields", "expected a non-empty list")
        timestamp = status = None
        channels: list[tuple[Channel, Item]] = []
        offset = 0
        allowed = ("timestamp", "status", *(c.value for c in Channel))
        for k, raw in enumerate(fields):
            where = f"profile.window.fields[{k}]"
            f = self.mapping(raw, where)
            name = self.choice(self.require(f, "name", where), f"{where}.name", allowed)
            item = self.item(
                {**f, "offset": offset, "function": function}, where, name=name, offset=True
            )
            offset += item.size
            if name == "timestamp":
                if item.type not in ("uint32", "uint64"):
                    raise self.fail(f"{where}.type", "the timestamp is a uint32 or uint64")
                timestamp = item
            elif name == "status":
                status = item
            else:
                ch = Channel(name)
                if any(c == ch for c, _ in channels):
                    raise self.fail(f"{where}.name", f"{name} appears twice")
                if item.unit is not None and item.unit != ch.unit:
                    raise self.fail(f"{where}.unit", f"{item.unit!r}: scale to {ch.unit}")
                channels.append((ch, item))
        if timestamp is None:
            raise self.fail("profile.window.fields", "a record needs a 'timestamp' field")
        if not channels:
            raise self.fail("profile.window.fields", "a record needs at least one channel")
        if records * offset > MAX_READ:
            raise self.fail(
                "profile.window.records",
                f"{records} records × {offset} registers exceed {MAX_READ}",
            )
        return ProfileSpec(
            period,
            depth,
            selector,
            address,
            function,
            records,
            timestamp,  # type: ignore[arg-type]
            status,
            tuple(channels),
            offset,
            stamp,  # type: ignore[arg-type]
            values,  # type: ignore[arg-type]
        )

    def no_overlap(self, items: list[Item]) -> None:
        for function in FUNCTION_CODES:
            taken = sorted((i for i in items if i.function == function), key=lambda i: i.address)
            for a, b in zip(taken, taken[1:], strict=False):
                if b.address < a.end:
                    raise self.fail(b.name, f"{function} register {b.address} overlaps {a.name}")
