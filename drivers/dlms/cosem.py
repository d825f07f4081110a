"""The COSEM object model the CGM reads: OBIS codes, units, date-times, profile columns.

Free of I/O. The simulator does not import this module for what it serves (it encodes from
its own Blue Book table), so a mistake here shows up as a failing test, not as agreement.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum

from dlms_cosem import dlms_data
from dlms_cosem.enumerations import CosemInterface

from drivers.base import Channel

from . import axdr

# --- addressing (IEC 62056-47 wrapper ports = DLMS SAPs) ----------------------------------

WRAPPER_VERSION = 1
MANAGEMENT_CLIENT = 0x01  # level 2: management client (Blue Book / IDIS convention)
PUBLIC_CLIENT = 0x10  # no security; refused by the simulator (art. 17 wants a password)
READING_CLIENT = 0x20  # level 1: a reading client with its own LLS password
MANAGEMENT_LOGICAL_DEVICE = 0x01  # default server wPort

# --- OBIS codes ---------------------------------------------------------------------------

CLOCK = bytes([0, 0, 1, 0, 0, 255])
SERIAL = bytes([0, 0, 96, 1, 0, 255])  # device ID 1: manufacturing (serial) number
MANUFACTURER = bytes([0, 0, 96, 1, 1, 255])  # device ID 2: used here for the manufacturer
MODEL = bytes([0, 0, 96, 1, 2, 255])  # device ID 3: used here for the model / meter type
FIRMWARE = bytes([1, 0, 0, 2, 0, 255])  # active firmware identifier
LOAD_PROFILE = bytes([1, 0, 99, 1, 0, 255])  # load profile 1 (Profile Generic)
PROFILE_STATUS = bytes([0, 0, 96, 10, 1, 255])  # status register captured with each entry
ASSOCIATION_LN = bytes([0, 0, 40, 0, 0, 255])  # the current association

# Cumulative energy (Register, class 3) and energy over the last capture period (class 3).
TOTAL_ENERGY: dict[Channel, bytes] = {
    Channel.ACTIVE_IMPORT: bytes([1, 0, 1, 8, 0, 255]),
    Channel.ACTIVE_EXPORT: bytes([1, 0, 2, 8, 0, 255]),
    Channel.REACTIVE_IMPORT: bytes([1, 0, 3, 8, 0, 255]),
    Channel.REACTIVE_EXPORT: bytes([1, 0, 4, 8, 0, 255]),
}
INTERVAL_ENERGY: dict[Channel, bytes] = {
    Channel.ACTIVE_IMPORT: bytes([1, 0, 1, 29, 0, 255]),
    Channel.ACTIVE_EXPORT: bytes([1, 0, 2, 29, 0, 255]),
    Channel.REACTIVE_IMPORT: bytes([1, 0, 3, 29, 0, 255]),
    Channel.REACTIVE_EXPORT: bytes([1, 0, 4, 29, 0, 255]),
}
LOGICAL_DEVICE_NAME = bytes([0, 0, 42, 0, 0, 255])  # COSEM logical device name, mandatory
# Value group C of the four energy channels (A = 1 electricity).
CHANNEL_BY_C: dict[int, Channel] = {
    1: Channel.ACTIVE_IMPORT,
    2: Channel.ACTIVE_EXPORT,
    3: Channel.REACTIVE_IMPORT,
    4: Channel.REACTIVE_EXPORT,
}
D_CUMULATIVE = 8  # time integral 1: energy since the register was cleared
D_INTERVAL = 29  # time integral 5: energy over the last capture period

# --- DLMS units (Blue Book, table of enum unit codes) ------------------------------------

UNIT_WH = 30  # active energy, Wh
UNIT_VAH = 31  # apparent energy, VAh
UNIT_VARH = 32  # reactive energy, varh
UNIT_NAMES = {
    UNIT_WH: "Wh",
    UNIT_VAH: "VAh",
    UNIT_VARH: "varh",
    27: "W",
    29: "var",
    33: "A",
    35: "V",
    44: "Hz",
    255: "count",
}
CHANNEL_UNIT: dict[Channel, int] = {
    Channel.ACTIVE_IMPORT: UNIT_WH,
    Channel.ACTIVE_EXPORT: UNIT_WH,
    Channel.REACTIVE_IMPORT: UNIT_VARH,
    Channel.REACTIVE_EXPORT: UNIT_VARH,
}


def to_kilo(raw: int | float, scaler: int, unit: int, channel: Channel) -> float:
    """A register value in the CGM's units (kWh / kvarh): ``raw · 10^scaler`` Wh or varh / 1000.

    A unit that does not belong to the channel is an error, never silently rescaled.
    """
    if unit != CHANNEL_UNIT[channel]:
        raise ValueError(f"{channel} reported unit code {unit}, expected {CHANNEL_UNIT[channel]}")
    return round(float(raw) * 10.0**scaler / 1000.0, 6)


# --- date-time (octet-string(12), Blue Book 4.1.6.1) --------------------------------------

DEVIATION_UNSPECIFIED = -0x8000
COLOMBIA = timezone(timedelta(hours=-5), "COT")


def encode_datetime(when: datetime, tz: timezone = COLOMBIA, status: int = 0) -> bytes:
    """12-byte COSEM date-time in local time ``tz`` with its deviation.

    Blue Book convention: deviation is minutes from local time TO UTC (local + deviation =
    UTC), so UTC−5 is encoded as +300, CET as −60.
    """
    local = when.astimezone(tz)
    offset = local.utcoffset() or timedelta(0)
    deviation = -int(offset.total_seconds() // 60)
    return (
        local.year.to_bytes(2, "big")
        + bytes([local.month, local.day, local.isoweekday()])
        + bytes([local.hour, local.minute, local.second, local.microsecond // 10000])
        + deviation.to_bytes(2, "big", signed=True)
        + bytes([status & 0xFF])
    )


def decode_datetime(raw: bytes, default_tz: timezone = COLOMBIA) -> tuple[datetime, int]:
    """Aware UTC datetime and clock status from a 12-byte COSEM date-time.

    A deviation of 0x8000 ("not specified") means the meter's local time: ``default_tz``.
    (dlms_cosem.time returns naive datetimes for deviation 0 and 0x8000, hence this codec.)
    """
    if len(raw) != 12:
        raise ValueError(f"date-time must be 12 bytes, got {len(raw)}")
    year = int.from_bytes(raw[0:2], "big")
    month, day = raw[2], raw[3]
    hour, minute, second, hundredths = raw[5], raw[6], raw[7], raw[8]
    if 0xFFFF in (year,) or 0xFF in (month, day, hour, minute):
        raise ValueError("date-time with wildcards is not a point in time")
    second = 0 if second == 0xFF else second
    hundredths = 0 if hundredths == 0xFF else hundredths
    deviation = int.from_bytes(raw[9:11], "big", signed=True)
    if deviation == DEVIATION_UNSPECIFIED:
        tz = default_tz
    else:
        if not -720 <= deviation <= 840:
            raise ValueError(f"deviation {deviation} out of range")
        tz = timezone(timedelta(minutes=-deviation))
    local = datetime(year, month, day, hour, minute, second, hundredths * 10000, tzinfo=tz)
    return local.astimezone(UTC), raw[11]


# --- A-XDR data helpers -------------------------------------------------------------------


def parse_data(raw: bytes) -> dlms_data.AbstractDlmsData:
    """Decode exactly one A-XDR ``Data`` value (raise on trailing bytes: a damaged frame)."""
    return axdr.decode_one(raw)


@dataclass(frozen=True)
class CaptureObject:
    """One column of a Profile Generic buffer (attribute 3 element)."""

    class_id: int
    obis: bytes
    attribute: int
    data_index: int = 0

    def encode(self) -> dlms_data.DataStructure:
        return dlms_data.DataStructure(
            [
                dlms_data.UnsignedLongData(self.class_id),
                dlms_data.OctetStringData(self.obis),
                dlms_data.IntegerData(self.attribute),
                dlms_data.UnsignedLongData(self.data_index),
            ]
        )

    @classmethod
    def decode(cls, item: dlms_data.AbstractDlmsData) -> CaptureObject:
        class_id, obis, attribute, index = item.to_python()
        return cls(int(class_id), bytes(obis), int(attribute), int(index))


CLOCK_CAPTURE = CaptureObject(CosemInterface.CLOCK, CLOCK, 2)


@functools.lru_cache(maxsize=1024)
def obis_str(obis: bytes) -> str:
    a, b, c, d, e, f = obis
    return f"{a}-{b}:{c}.{d}.{e}.{f}"


# --- profile column semantics ----------------------------------------------------------------


class Use(StrEnum):
    """How the driver uses one captured column."""

    CLOCK = "clock"
    INTERVAL = "interval"  # energy of the capture period, taken as is
    CUMULATIVE = "cumulative"  # register value at capture: differenced between entries
    STATUS = "status"  # entry status byte
    IGNORED = "ignored"  # kept out of the energy channels (and shown by ``cgm probe``)


@dataclass(frozen=True)
class ColumnRole:
    column: CaptureObject
    use: Use
    channel: Channel | None = None
    note: str = ""


_REGISTERS = (3, 4)  # Register, Extended register: value in attribute 2, scaler_unit in 3
_QUANTITY = {  # value group C of quantities met in load profiles that are not energy here
    **{c: "apparent energy/power" for c in (9, 10)},
    **{c: "phase active energy/power" for c in (21, 22, 41, 42, 61, 62)},
    **{c: "phase reactive energy/power" for c in (23, 24, 43, 44, 63, 64)},
    **{c: "current" for c in (11, 31, 51, 71, 91)},
    **{c: "voltage" for c in (12, 32, 52, 72)},
    **{c: "power factor" for c in (13, 33, 53, 73)},
    14: "frequency",
    **{c: "quadrant reactive energy/power" for c in (5, 6, 7, 8)},
}
_D_NAME = {
    4: "demand (current period)",
    5: "demand (last period)",
    6: "maximum demand",
    7: "instantaneous value",
    9: "energy of the billing period",
    24: "average",
}


def _describe(obis: bytes) -> str:
    a, _b, c, d, _e, f = obis
    if a != 1:
        return "not an electricity quantity"
    if f != 255:
        return f"historical value (F={f})"
    if c in CHANNEL_BY_C:
        return _D_NAME.get(d, f"D={d} is not interval or cumulative energy")
    return _QUANTITY.get(c, f"quantity C={c}")


def classify(columns: tuple[CaptureObject, ...]) -> list[ColumnRole]:
    """The role of every capture object, from its class, OBIS and attribute.

    Per channel: interval energy (``1.0.c.29.e.255``) wins over cumulative (``1.0.c.8.e.255``);
    within a kind the total (E = 0) wins over tariff registers (E > 0), which are summed only
    where no total is captured. Demand, voltage, status and anything else stay out of the
    energy channels, each with a note saying why.
    """
    roles: list[ColumnRole | None] = [None] * len(columns)
    candidates: dict[tuple[Channel, Use], dict[int, int]] = {}  # (channel, use) -> E -> index
    status_seen = False
    for i, col in enumerate(columns):
        a, _b, c, d, e, f = col.obis
        if col == CLOCK_CAPTURE:
            roles[i] = ColumnRole(col, Use.CLOCK)
        elif col.obis[:4] == PROFILE_STATUS[:4] and col.obis[5] == 255:
            if col.attribute != 2 or status_seen:
                roles[i] = ColumnRole(col, Use.IGNORED, note="another status column")
            else:
                status_seen = True
                roles[i] = ColumnRole(col, Use.STATUS)
        elif a == 1 and c in CHANNEL_BY_C and d in (D_INTERVAL, D_CUMULATIVE) and f == 255:
            use = Use.INTERVAL if d == D_INTERVAL else Use.CUMULATIVE
            if col.class_id not in _REGISTERS or col.attribute != 2:
                note = f"class {col.class_id} attribute {col.attribute} is not a register value"
                roles[i] = ColumnRole(col, Use.IGNORED, note=note)
            elif e in candidates.setdefault((CHANNEL_BY_C[c], use), {}):
                roles[i] = ColumnRole(col, Use.IGNORED, note="same register captured twice")
            else:
                candidates[(CHANNEL_BY_C[c], use)][e] = i
        else:
            roles[i] = ColumnRole(col, Use.IGNORED, note=_describe(col.obis))
    for (channel, use), by_tariff in candidates.items():
        if use is Use.CUMULATIVE and (channel, Use.INTERVAL) in candidates:
            for i in by_tariff.values():
                roles[i] = ColumnRole(
                    columns[i], Use.IGNORED, channel, "interval energy of this channel captured"
                )
            continue
        total = by_tariff.get(0)
        for e, i in by_tariff.items():
            if total is not None and e != 0:
                roles[i] = ColumnRole(columns[i], Use.IGNORED, channel, "tariff; total captured")
            else:
                note = "" if e == 0 else f"tariff {e}, summed"
                roles[i] = ColumnRole(columns[i], use, channel, note)
    return [r for r in roles if r is not None]
