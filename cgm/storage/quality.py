"""Quality flag bits of a stored reading (``reading.quality``) and settled value (``flags``).

One integer per row, so flags cost nothing on the hot path and filter with a bit test in SQL
(``quality & 256 <> 0``). Layout:

* bits 0–7: the meter's own status byte for the profile entry, carried unchanged from
  :class:`drivers.base.EntryStatus` (the same values), so no meter information is lost or
  re-interpreted on the way in;
* bits 8 and up: what cgm itself knows about the value.

Only bits defined here may be stored (:data:`KNOWN_MASK`): an unknown bit is a bug upstream,
and storing it would give it a meaning nobody defined.
"""

from __future__ import annotations

from enum import IntFlag

from drivers.base import EntryStatus


class Quality(IntFlag):
    """Flags of one value. ``Quality(0)`` is a normal, complete, measured value."""

    # --- bits 0–7: meter status, as the meter reported it (drivers.base.EntryStatus) ----
    METER_CRITICAL_ERROR = EntryStatus.CRITICAL_ERROR
    """The meter flagged a critical error while capturing the interval."""
    METER_CLOCK_INVALID = EntryStatus.CLOCK_INVALID
    """The meter's clock was invalid: the interval stamp cannot be trusted."""
    METER_DATA_NOT_VALID = EntryStatus.DATA_NOT_VALID
    """The meter itself marked the captured value as not valid."""
    METER_DAYLIGHT_SAVING = EntryStatus.DAYLIGHT_SAVING
    """DST was active in the meter (Colombia has none: a misconfigured meter)."""
    METER_STATUS_0x10 = 0x10
    """Vendor-specific status bit 4, kept verbatim."""
    METER_CLOCK_ADJUSTED = EntryStatus.CLOCK_ADJUSTED
    """The meter clock was set during the interval: the interval is shorter or longer."""
    METER_STATUS_0x40 = 0x40
    """Vendor-specific status bit 6, kept verbatim."""
    METER_POWER_DOWN = EntryStatus.POWER_DOWN
    """A power failure occurred during the interval (the value may be partial)."""

    # --- bits 8+: cgm's own knowledge ---------------------------------------------------
    ESTIMATED = 0x0100
    """Not measured: filled by an estimation method (VEE), never by the collector."""
    CLOCK_CORRECTED = 0x0200
    """cgm shifted the interval stamp to correct a known meter clock offset."""
    SUSPECT = 0x0400
    """Failed a validation check (VEE): stored as measured, not to be settled unreviewed."""
    BACKUP_CHANNEL = 0x0800
    """Read over the meter's backup communication channel instead of the primary."""
    PARTIAL = 0x1000
    """The interval was not complete when read (e.g. the meter was read before its end)."""
    MANUAL = 0x2000
    """Entered or corrected by a person (with an audit reason), not read from a meter."""
    LARGE_CLOCK_CORRECTION = 0x4000
    """cgm corrected the meter clock beyond its limit during this interval (art. 16): the
    interval may be shorter or longer than an hour; validation looks at it."""
    DERIVED_FROM_REGISTERS = 0x8000
    """Not from a load profile: the advance of cumulative registers between snapshots,
    interpolated to the hour boundaries (meters without a profile)."""
    REGISTER_ROLLOVER = 0x10000
    """The value is a cumulative register's advance that wrapped past the register's maximum
    inside the interval (drivers.cumulative): computed across the wrap, flagged for review."""


METER_STATUS_MASK = 0x00FF
"""The bits copied from the meter's status byte."""

KNOWN_MASK = 0
for _flag in Quality:
    KNOWN_MASK |= int(_flag)
del _flag


def from_meter_status(status: int) -> Quality:
    """The quality of a driver's profile entry whose status byte is ``status``."""
    if not 0 <= status <= METER_STATUS_MASK:
        raise ValueError(f"meter status {status!r} is not a status byte (0..255)")
    return Quality(status)
