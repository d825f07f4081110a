"""Readings storage: the write path (idempotent, versioned, bulk) and the queries on it."""

from cgm.storage.common import InvalidRows, UnknownKeys, WriteResult
from cgm.storage.quality import Quality
from cgm.storage.readings import (
    READING_DTYPE,
    STORED_DTYPE,
    Reading,
    last_interval,
    read_readings,
    readings_array,
    write_readings,
)
from cgm.storage.settled import (
    SettledDays,
    SettledValue,
    StoredSettled,
    read_settled,
    read_settled_days,
    write_settled,
)

__all__ = [
    "READING_DTYPE",
    "STORED_DTYPE",
    "InvalidRows",
    "Quality",
    "Reading",
    "SettledDays",
    "SettledValue",
    "StoredSettled",
    "UnknownKeys",
    "WriteResult",
    "last_interval",
    "read_readings",
    "read_settled",
    "read_settled_days",
    "readings_array",
    "write_readings",
    "write_settled",
]
