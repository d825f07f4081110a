"""The simulated meter's COSEM objects, written from the Blue Book, not from the driver.

The driver's object model (``drivers/dlms/cosem.py``) is deliberately not imported here: if
the driver took a wrong OBIS code, unit or date-time sign, a simulator encoding with the same
table would agree with it and every test would pass. OBIS codes, class ids and unit codes
below are typed from DLMS UA 1000-1 (Blue Book) and IEC 62056-6-1; date-times are encoded by
dlms-cosem's own ``datetime_to_bytes``; A-XDR by dlms-cosem's data classes.

Variants (:class:`DlmsVariant`) give the layouts met in the field: a profile of interval
energies or of cumulative registers (totals or tariff registers), with or without a status
column, with demand and voltage columns, with or without the serial-number object, and two
misbehaviours seen on real meters (a malformed GET-with-list answer, endless blocks).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
from dlms_cosem import dlms_data
from dlms_cosem.time import datetime_from_bytes, datetime_to_bytes

from drivers.base import Channel
from simulators.meter import COLOMBIA_OFFSET, SimulatedMeter

COLOMBIA = timezone(COLOMBIA_OFFSET)

# Client SAPs and the server's logical device (Blue Book / IDIS conventions): the wrapper's
# source and destination wPorts.
MANAGEMENT_CLIENT = 0x01  # level 2
READING_CLIENT = 0x20  # level 1
MANAGEMENT_LOGICAL_DEVICE = 0x01

# Interface classes (Blue Book 4.1 / 4.3).
DATA, REGISTER, DEMAND_REGISTER, PROFILE_GENERIC, CLOCK_CLASS = 1, 3, 5, 7, 8
# Unit enumeration (Blue Book table "Enumerated values for physical units").
WH, VARH, W, V = 30, 32, 27, 35

# OBIS codes (IEC 62056-6-1 / Blue Book 7.4 / 7.5).
CLOCK = bytes([0, 0, 1, 0, 0, 255])
LOGICAL_DEVICE_NAME = bytes([0, 0, 42, 0, 0, 255])
SERIAL = bytes([0, 0, 96, 1, 0, 255])
MANUFACTURER = bytes([0, 0, 96, 1, 1, 255])
MODEL = bytes([0, 0, 96, 1, 2, 255])
FIRMWARE = bytes([1, 0, 0, 2, 0, 255])
STATUS = bytes([0, 0, 96, 10, 1, 255])
LOAD_PROFILE = bytes([1, 0, 99, 1, 0, 255])
ASSOCIATION_LN = bytes([0, 0, 40, 0, 0, 255])  # the current association
DEMAND = bytes([1, 0, 1, 5, 0, 255])  # active import, last average demand
VOLTAGE_L1 = bytes([1, 0, 32, 7, 0, 255])  # instantaneous voltage L1
# Value group C of each energy direction: 1/2 active +/−, 3/4 reactive +/−.
C_OF = {
    Channel.ACTIVE_IMPORT: 1,
    Channel.ACTIVE_EXPORT: 2,
    Channel.REACTIVE_IMPORT: 3,
    Channel.REACTIVE_EXPORT: 4,
}
UNIT_OF = {ch: WH if C_OF[ch] <= 2 else VARH for ch in C_OF}


def energy(channel: Channel, d: int, e: int = 0) -> bytes:
    """1.0.c.d.e.255: d = 8 cumulative (time integral 1), 29 interval (time integral 5)."""
    return bytes([1, 0, C_OF[channel], d, e, 255])


def encode_datetime(when: datetime) -> bytes:
    """octet-string(12) in Colombian local time (deviation +300), by dlms-cosem's encoder."""
    return datetime_to_bytes(when.astimezone(COLOMBIA))


def decode_datetime(raw: bytes) -> datetime:
    """Aware UTC. dlms-cosem returns naive for deviation 0 as well as for 0x8000
    ("unspecified"), so the zone is taken from the deviation bytes here: minutes from local
    time to UTC (Blue Book 4.1.6.1); unspecified means the meter's own zone, Colombia's."""
    when, _status = datetime_from_bytes(raw)
    deviation = int.from_bytes(raw[9:11], "big", signed=True)
    zone = COLOMBIA if deviation == -0x8000 else timezone(-timedelta(minutes=deviation))
    return when.replace(tzinfo=zone).astimezone(UTC)


@dataclass(frozen=True)
class DlmsVariant:
    """How one simulated DLMS meter lays out its objects and how it misbehaves."""

    profile: str = "interval"  # interval (x.29) | cumulative (x.8 registers)
    tariffs: int = 0  # cumulative: capture x.8.1 … x.8.n (day/night) instead of x.8.0
    status_column: bool = True
    extra_columns: bool = False  # demand and voltage columns, which are not energy
    serial_object: bool = True  # False: identity only through the logical device name
    logical_device_name: str | None = None  # default "CGM" + serial
    list_answer: str = "ok"  # ok | malformed | refused | partial (GET-with-list)
    endless_blocks: bool = False  # a long answer whose blocks never end

    def __post_init__(self) -> None:
        if self.profile not in ("interval", "cumulative"):
            raise ValueError(f"profile must be interval or cumulative, not {self.profile!r}")
        if self.list_answer not in ("ok", "malformed", "refused", "partial"):
            raise ValueError(f"unknown list_answer {self.list_answer!r}")


def _capture(class_id: int, obis: bytes, attribute: int) -> dlms_data.DataStructure:
    return dlms_data.DataStructure(
        [
            dlms_data.UnsignedLongData(class_id),
            dlms_data.OctetStringData(obis),
            dlms_data.IntegerData(attribute),
            dlms_data.UnsignedLongData(0),
        ]
    )


def _tariff_weights(tariff: int, tariffs: int) -> Callable[[np.ndarray], np.ndarray]:
    """Tariff 1 counts local hours 06–18, tariff 2 the rest (more tariffs: by hour modulo)."""

    def weights(starts: np.ndarray) -> np.ndarray:
        hour = ((starts + int(COLOMBIA_OFFSET.total_seconds())) % 86400) // 3600
        if tariffs == 2:
            day = (hour >= 6) & (hour < 18)
            return (day if tariff == 1 else ~day).astype(float)
        return (hour % tariffs == tariff - 1).astype(float)

    return weights


class Layout:
    """The columns of one meter's profile and how each row is encoded."""

    def __init__(self, meter: SimulatedMeter, variant: DlmsVariant) -> None:
        self.meter = meter
        self.variant = variant
        self.columns: list[tuple[int, bytes, int]] = [(CLOCK_CLASS, CLOCK, 2)]
        if variant.profile == "interval":
            self.columns += [(REGISTER, energy(ch, 29), 2) for ch in C_OF]
        elif variant.tariffs:
            self.columns += [
                (REGISTER, energy(ch, 8, t), 2)
                for ch in C_OF
                for t in range(1, variant.tariffs + 1)
            ]
        else:
            self.columns += [(REGISTER, energy(ch, 8), 2) for ch in C_OF]
        if variant.extra_columns:
            self.columns += [(DEMAND_REGISTER, DEMAND, 3), (REGISTER, VOLTAGE_L1, 2)]
        if variant.status_column:
            self.columns.append((DATA, STATUS, 2))

    def capture_objects(self) -> bytes:
        return dlms_data.DataArray([_capture(*c) for c in self.columns]).to_bytes()

    def registers(self, ends: list[datetime]) -> dict[bytes, list[float]]:
        """Cumulative values (kWh/kvarh) of every captured register at ``ends``."""
        meter, n = self.meter, self.variant.tariffs
        if not n:
            totals = meter.registers_at(ends)
            return {energy(ch, 8): totals[ch] for ch in C_OF}
        out: dict[bytes, list[float]] = {}
        for t in range(1, n + 1):
            part = meter.registers_at(ends, _tariff_weights(t, n), share=1.0 / n)
            out.update({energy(ch, 8, t): part[ch] for ch in C_OF})
        return out

    def buffer(self, low: datetime | None, high: datetime | None) -> bytes:
        """Rows stamped with the interval END (Colombian time); energies in Wh/varh."""
        meter, period = self.meter, self.meter.capture_period
        if low is None or high is None:
            now = meter.real_now()
            entries = meter.profile(now - period * (meter.depth + 1), now)
        else:
            entries = meter.profile(low - period, high - period + timedelta(microseconds=1))
        cumulative = (
            self.registers([e.end for e in entries]) if self.variant.profile == "cumulative" else {}
        )
        rows = []
        for i, entry in enumerate(entries):
            cells: list[dlms_data.AbstractDlmsData] = []
            for _class_id, obis, _attribute in self.columns:
                if obis == CLOCK:
                    cells.append(dlms_data.OctetStringData(encode_datetime(entry.end)))
                elif obis in cumulative:  # a 32-bit Wh counter wraps, as a meter's does
                    raw = _wh(cumulative[obis][i]) % 2**32
                    cells.append(dlms_data.DoubleLongUnsignedData(raw))
                elif obis[3] == 29:
                    channel = next(ch for ch, c in C_OF.items() if c == obis[2])
                    cells.append(dlms_data.DoubleLongUnsignedData(_wh(entry.values[channel])))
                elif obis == DEMAND:  # W: the interval's energy over its length
                    kw = entry.values[Channel.ACTIVE_IMPORT] / (period.total_seconds() / 3600)
                    cells.append(dlms_data.DoubleLongUnsignedData(round(kw * 1000)))
                elif obis == VOLTAGE_L1:
                    cells.append(dlms_data.UnsignedLongData(1202))  # 120.2 V, scaler −1
                else:  # status
                    cells.append(dlms_data.UnsignedIntegerData(int(entry.status)))
            rows.append(dlms_data.DataStructure(cells))
        return dlms_data.DataArray(rows).to_bytes()


def _wh(kwh: float) -> int:
    return round(kwh * 1000)


@functools.lru_cache(maxsize=256)
def scaler_unit(scaler: int, unit: int) -> bytes:
    return dlms_data.DataStructure(
        [dlms_data.IntegerData(scaler), dlms_data.EnumData(unit)]
    ).to_bytes()
