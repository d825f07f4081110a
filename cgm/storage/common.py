"""What the readings and settled write paths share: results, errors, channel ids, checks."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg

from drivers.base import Channel

HOUR = timedelta(hours=1)

# Ids of the ``channel`` table (0002_readings.sql); fixed by that migration.
CHANNEL_IDS: dict[Channel, int] = {
    Channel.ACTIVE_IMPORT: 1,
    Channel.ACTIVE_EXPORT: 2,
    Channel.REACTIVE_IMPORT: 3,
    Channel.REACTIVE_EXPORT: 4,
}
CHANNELS_BY_ID: dict[int, Channel] = {v: k for k, v in CHANNEL_IDS.items()}

MAX_EXAMPLES = 5  # problems quoted in an error message; the count is always exact


class InvalidRows(ValueError):
    """A batch was rejected before anything was written; ``problems`` says why, per check."""

    def __init__(self, what: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{what} rejected, nothing written: " + "; ".join(problems))


class UnknownKeys(InvalidRows):
    """Rows name meters or frontiers the registry does not have."""


@dataclass(frozen=True)
class WriteResult:
    """What one write batch did. ``received`` counts rows before in-batch duplicates
    collapsed, so ``received - inserted - unchanged - superseded - kept_manual`` is the
    number of identical duplicates dropped."""

    batch_id: int | None
    received: int
    inserted: int
    unchanged: int
    superseded: int
    kept_manual: int = 0  # settled only: automatic values refused over a manual one
    direct: int = 0  # readings only: rows that took the direct-COPY path (diagnostics)
    # readings only: rows inserted or superseded per meter id (what a collector reports per
    # session); meters with nothing new are absent.
    stored_by_meter: dict[int, int] | None = None


def channel_id(channel: int | str | Channel) -> int:
    """The ``channel`` table id of a Channel, its name, or an id; ValueError otherwise."""
    if isinstance(channel, bool):
        raise ValueError(f"unknown channel {channel!r}")
    if isinstance(channel, int | np.integer):
        if int(channel) in CHANNELS_BY_ID:
            return int(channel)
        raise ValueError(f"unknown channel {channel!r} (ids are 1..4)")
    try:
        return CHANNEL_IDS[Channel(channel)]
    except ValueError:
        raise ValueError(f"unknown channel {channel!r}") from None


def to_utc_us(value: object, what: str) -> np.datetime64:
    """An aware datetime as naive-UTC ``datetime64[us]``; naive datetimes are refused
    because guessing their zone would shift readings by hours (Colombia is UTC−5)."""
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{what} {value.isoformat()} is naive (needs a time zone)")
        return np.datetime64(value.astimezone(UTC).replace(tzinfo=None), "us")
    if isinstance(value, np.datetime64):
        return value.astype("M8[us]")
    raise ValueError(f"{what} {value!r} is not a datetime")


def from_us(value: np.datetime64) -> datetime:
    """Aware UTC datetime of a ``datetime64[us]``."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(value.astype("i8")))


def examples(mask: np.ndarray, describe) -> str:  # noqa: ANN001 - small local helper
    """'N rows (row i: …, row j: …)' for the rows where ``mask`` is true."""
    idx = np.flatnonzero(mask)
    shown = ", ".join(f"row {i}: {describe(i)}" for i in idx[:MAX_EXAMPLES])
    more = f", … {len(idx) - MAX_EXAMPLES} more" if len(idx) > MAX_EXAMPLES else ""
    return f"{len(idx)} row(s) ({shown}{more})"


async def set_audit_context(
    conn: psycopg.AsyncConnection, actor: str | None, reason: str | None
) -> None:
    """Who and why for the audit trigger (0003), for this transaction only."""
    await conn.execute(
        "SELECT set_config('cgm.actor', %s, true), set_config('cgm.reason', %s, true)",
        (actor or "", reason or ""),
    )


async def missing_ids(conn: psycopg.AsyncConnection, table: str, ids: np.ndarray) -> list[int]:
    """Which of ``ids`` are not rows of ``table`` (meter or frontier)."""
    assert table in ("meter", "frontier")
    cur = await conn.execute(
        f"SELECT x FROM unnest(%s::bigint[]) AS x "  # noqa: S608 - table is a fixed literal
        f"WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE t.id = x) ORDER BY x",
        ([int(i) for i in ids],),
    )
    return [r[0] for r in await cur.fetchall()]


async def packed(
    conn: psycopg.AsyncConnection,
    record: str,
    rest: str,
    params: dict[str, Any],
    dtype: np.dtype,
    *,
    native: bool = True,
) -> np.ndarray:
    """Rows as one bytea of fixed-width big-endian records, parsed by numpy.

    A COPY TO or a plain fetch costs a Python round of the driver per row (about 10 µs); a
    day of a large fleet is millions of rows. ``string_agg`` of ``int8send(..) || ..`` makes
    the server pack them into one value instead, which numpy reads in one call. ``native``:
    converted to this machine's byte order (a copy); False: the big-endian records as they
    came, for a caller that converts them elsewhere (off the event loop).
    """
    query = f"SELECT string_agg({record}, ''::bytea) {rest}"  # noqa: S608 - fixed fragments
    async with conn.cursor(binary=True) as cur:
        await cur.execute(query, params)
        row = await cur.fetchone()
    blob = row[0] if row and row[0] is not None else b""
    arr = np.frombuffer(blob, dtype=dtype)
    return arr.astype(dtype.newbyteorder("=")) if native else arr
