"""The COSEM object model the CGM reads, and codecs both the driver and the simulator share.

Kept free of I/O so that the simulator serves exactly what the driver expects and a test can
check both against the same table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from dlms_cosem import dlms_data
from dlms_cosem.enumerations import CosemInterface

from drivers.base import Channel

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
CHANNEL_BY_OBIS: dict[bytes, Channel] = {
    **{o: ch for ch, o in TOTAL_ENERGY.items()},
    **{o: ch for ch, o in INTERVAL_ENERGY.items()},
}

# --- DLMS units (Blue Book, table of enum unit codes) ------------------------------------

UNIT_WH = 30  # active energy, Wh
UNIT_VAH = 31  # apparent energy, VAh
UNIT_VARH = 32  # reactive energy, varh
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
    parser = dlms_data.DlmsDataParser()
    items = parser.parse(bytes(raw), limit=1)
    if not items or not parser.buffer_empty:
        raise ValueError("trailing or missing bytes after A-XDR data")
    if parser.pointer > len(parser.buffer):
        raise ValueError("truncated A-XDR data")
    return items[0]


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


def obis_str(obis: bytes) -> str:
    a, b, c, d, e, f = obis
    return f"{a}-{b}:{c}.{d}.{e}.{f}"
