"""The simulator's own reading of a register map, and its own register encoder.

The driver decodes with ``drivers/modbus/registermap.py`` (pymodbus' converters after putting
the registers in ABCD order). If the simulator encoded with the same code, a wrong byte order,
scaler or address would be wrong on both sides and every test would still pass. So the
simulator reads the same YAML files with this small reader (no validation: the driver's loader
validates, and a test that loads a map through both sides compares them) and encodes with
``struct`` and the byte patterns as the letter notation defines them:

- a value's big-endian bytes are named A, B, C, … (``struct.pack('>…')``);
- the map's order is the sequence those bytes travel in on the wire, register by register,
  high byte of each register first (the Modbus convention for one register);
- for 16- and 64-bit values the 32-bit pattern extends as in the usual tables (Telegraf's
  ``byte_order``, vendor manuals): CDAB on 64 bits is GHEFCDAB.
"""

from __future__ import annotations

import functools
import re
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import yaml

MAPS_DIR = Path(__file__).resolve().parents[2] / "drivers" / "modbus" / "maps"

# struct formats, big-endian: the bytes A, B, C, … of the value in that order.
FORMATS = {
    "uint16": ">H",
    "int16": ">h",
    "uint32": ">I",
    "int32": ">i",
    "uint64": ">Q",
    "int64": ">q",
    "float32": ">f",
    "float64": ">d",
}
# Wire byte sequence for each map order and value width (in bytes).
PATTERNS = {
    "ABCD": {2: "AB", 4: "ABCD", 8: "ABCDEFGH"},
    "CDAB": {2: "AB", 4: "CDAB", 8: "GHEFCDAB"},
    "BADC": {2: "BA", 4: "BADC", 8: "BADCFEHG"},
    "DCBA": {2: "BA", 4: "DCBA", 8: "HGFEDCBA"},
}
OLD_SPELLING = {"big": "ABCD", "little": "CDAB"}
CLOCK_FIELDS = ("year", "month", "day", "hour", "minute", "second")
EPOCH = datetime(1970, 1, 1)


# Where each travelling byte comes from in the big-endian value: (order, width) -> indices.
_PICK = {
    (order, width): tuple(ord(letter) - ord("A") for letter in pattern)
    for order, widths in PATTERNS.items()
    for width, pattern in widths.items()
}


def wire_bytes(value: float | int, dtype: str, order: str) -> bytes:
    """The bytes of ``value`` as they travel, for a numeric type and a map order."""
    raw = struct.pack(FORMATS[dtype], value)
    pick = _PICK[(order, len(raw))]
    if pick == tuple(range(len(raw))):
        return raw
    return bytes(raw[i] for i in pick)


def from_wire(data: bytes, dtype: str, order: str) -> float | int:
    pattern = PATTERNS[order][len(data)]
    raw = bytearray(len(data))
    for position, letter in enumerate(pattern):
        raw[ord(letter) - ord("A")] = data[position]
    return struct.unpack(FORMATS[dtype], bytes(raw))[0]


def to_registers(data: bytes) -> list[int]:
    return [data[i] << 8 | data[i + 1] for i in range(0, len(data), 2)]


def from_registers(regs: list[int]) -> bytes:
    return b"".join(bytes((r >> 8, r & 0xFF)) for r in regs)


@dataclass(frozen=True)
class Field:
    """One value in the register space, as the simulator understands the map."""

    name: str
    address: int
    type: str = "uint16"
    function: str = "holding"
    length: int = 0
    scaler: float = 1.0
    order: str = "ABCD"

    @functools.cached_property
    def size(self) -> int:
        if self.type == "string":
            return self.length
        return struct.calcsize(FORMATS[self.type]) // 2

    @functools.cached_property
    def end(self) -> int:
        return self.address + self.size

    def encode(self, value: float | int | str) -> list[int]:
        return to_registers(self.wire(value))

    def wire(self, value: float | int | str) -> bytes:
        """The value's registers as they travel (what :meth:`encode` gives, as bytes)."""
        if self.type == "string":
            text = str(value).encode("ascii", errors="replace")[: self.length * 2]
            return text.ljust(self.length * 2, b"\0")
        scaled = float(value) / self.scaler  # type: ignore[arg-type]
        raw: float | int = scaled if self.type.startswith("float") else int(round(scaled))
        return wire_bytes(raw, self.type, self.order)

    def wrap(self, value: float) -> float:
        """A counter's value as an unsigned register of this width holds it (it rolls over)."""
        span = float(1 << (16 * self.size)) * self.scaler
        return value % span if self.type.startswith("uint") else value

    def decode(self, regs: list[int]) -> float | int | str:
        data = from_registers(regs)
        if self.type == "string":
            return data.rstrip(b"\0 ").decode("ascii", errors="replace")
        return from_wire(data, self.type, self.order) * self.scaler


@dataclass(frozen=True)
class Clock:
    layout: str
    address: int
    tz: timezone
    type: str = "uint32"
    order: str = "ABCD"
    status: Field | None = None

    @property
    def size(self) -> int:
        return len(CLOCK_FIELDS) if self.layout == "fields" else FORMATS_SIZE[self.type]

    def encode(self, when: datetime) -> list[int]:
        return to_registers(self.wire(when))

    def wire(self, when: datetime) -> bytes:
        local = when.astimezone(self.tz)
        if self.layout == "fields":
            return struct.pack(">6H", *(getattr(local, name) for name in CLOCK_FIELDS))
        return wire_bytes(meter_seconds(when, self.tz), self.type, self.order)

    def decode(self, regs: list[int]) -> datetime:
        if self.layout == "fields":
            return datetime(*regs[:6], tzinfo=self.tz).astimezone(UTC)  # type: ignore[misc]
        seconds = int(from_wire(from_registers(regs), self.type, self.order))
        return from_meter_seconds(seconds, self.tz)


FORMATS_SIZE = {name: struct.calcsize(fmt) // 2 for name, fmt in FORMATS.items()}


@dataclass(frozen=True)
class Profile:
    capture_period: Field
    depth: Field
    selector: Field
    address: int
    function: str
    records: int
    stamp: str
    fields: tuple[Field, ...]  # offset-relative addresses
    values: str = "interval"  # or "cumulative": records hold the registers at capture

    @functools.cached_property
    def record_size(self) -> int:
        return sum(f.size for f in self.fields)

    @functools.cached_property
    def window_size(self) -> int:
        return self.records * self.record_size

    @functools.cached_property
    def _record_struct(self) -> struct.Struct | None:
        """One ``struct`` for a whole record when every field travels in ABCD order (the
        bytes ``wire`` gives field by field, in one call); None otherwise."""
        if any(f.order != "ABCD" or f.type == "string" for f in self.fields):
            return None
        return struct.Struct(">" + "".join(FORMATS[f.type][1:] for f in self.fields))

    def record(self, values: dict[str, float | int]) -> bytes:
        """A record's registers as they travel; fields without a value are 0."""
        if not values:
            return bytes(2 * self.record_size)
        packer = self._record_struct
        if packer is None:
            return b"".join(f.wire(values.get(f.name, 0)) for f in self.fields)
        raw = []
        for f in self.fields:
            scaled = float(values.get(f.name, 0)) / f.scaler
            raw.append(scaled if f.type.startswith("float") else int(round(scaled)))
        return packer.pack(*raw)


@dataclass(frozen=True)
class SimMap:
    order: str
    password: Field | None
    level: Field | None
    auth_failed: int
    access_denied: int
    identity: dict[str, Field | str]
    clock: Clock | None
    registers: dict[str, Field]
    profile: Profile | None
    model: str = ""
    manufacturer: str = ""


def meter_seconds(when: datetime, tz: timezone) -> int:
    """Seconds since 1970-01-01 00:00 on the meter's wall clock."""
    offset = tz.utcoffset(None) or timedelta(0)
    return int(when.timestamp()) + int(offset.total_seconds())


def from_meter_seconds(seconds: int, tz: timezone) -> datetime:
    offset = tz.utcoffset(None) or timedelta(0)
    return datetime.fromtimestamp(seconds - int(offset.total_seconds()), UTC)


def _tz(text: str) -> timezone:
    if text in ("UTC", "Z", "+00:00"):
        return UTC
    m = re.fullmatch(r"([+-])(\d\d):(\d\d)", text)
    if not m:
        raise ValueError(f"time zone {text!r}")
    sign = -1 if m[1] == "-" else 1
    return timezone(sign * timedelta(hours=int(m[2]), minutes=int(m[3])))


class _Reader:
    def __init__(self, top: dict[str, Any]) -> None:
        self.order = self.order_of(top, "ABCD")
        self.function = top.get("function", "holding")

    @staticmethod
    def order_of(spec: dict[str, Any], default: str) -> str:
        if "byte_order" in spec:
            return str(spec["byte_order"])
        if "word_order" in spec:
            return OLD_SPELLING[spec["word_order"]]
        return default

    def field(self, name: str, spec: dict[str, Any], address_key: str = "address") -> Field:
        return Field(
            name,
            int(spec[address_key]),
            spec.get("type", "uint16"),
            spec.get("function", self.function),
            int(spec.get("length", 0)),
            float(spec.get("scaler", 1)),
            self.order_of(spec, self.order),
        )


def read_map(ref: str | Path) -> SimMap:
    """A map by model name (``sim-4q``) or path, read for serving."""
    text = str(ref)
    path = Path(text)
    if "/" not in text and "\\" not in text and not text.endswith((".yaml", ".yml")):
        path = MAPS_DIR / f"{text.lower()}.yaml"
    top = yaml.safe_load(path.read_text(encoding="utf-8"))
    r = _Reader(top)
    password = level = None
    auth_failed, access_denied = 3, 1
    if access := top.get("access"):
        password = r.field("password", access["password"])
        if "level" in access:
            level = r.field("level", access["level"])
        codes = access.get("exceptions", {})
        auth_failed = int(codes.get("auth_failed", 3))
        access_denied = int(codes.get("access_denied", 1))
    identity: dict[str, Field | str] = {}
    for name, spec in top["identity"].items():
        identity[name] = spec if isinstance(spec, str) else r.field(name, spec)
    clock = None
    if c := top.get("clock"):
        clock = Clock(
            c.get("layout", "fields"),
            int(c["address"]),
            _tz(str(c["timezone"])),
            c.get("type", "uint32"),
            r.order,
            r.field("clock.status", c["status"]) if "status" in c else None,
        )
    registers = {ch: r.field(ch, spec) for ch, spec in top["registers"].items()}
    profile = None
    if p := top.get("profile"):
        window = p["window"]
        function = window.get("function", r.function)
        fields, offset = [], 0
        for spec in window["fields"]:
            f = r.field(spec["name"], {**spec, "address": offset, "function": function})
            fields.append(f)
            offset += f.size
        profile = Profile(
            r.field("capture_period", p["capture_period"]),
            r.field("depth", p["depth"]),
            r.field("selector", p["selector"]),
            int(window["address"]),
            function,
            int(window["records"]),
            window.get("stamp", "end"),
            tuple(fields),
            window.get("values", "interval"),
        )
    return SimMap(
        r.order,
        password,
        level,
        auth_failed,
        access_denied,
        identity,
        clock,
        registers,
        profile,
        str(top.get("model", "")),
        str(top.get("manufacturer", "")),
    )
