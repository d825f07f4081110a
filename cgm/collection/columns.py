"""A session's hourly profile entries kept as columns from the moment each chunk arrives.

A first contact brings a month per meter (~720 entries, ~2,900 values); kept as
``ProfileEntry`` objects (a dict each) until the writer turned them into rows, hundreds of
sessions in flight held hundreds of thousands of objects, and the garbage collector walked
them again and again (measured: 17 % of the collector's CPU in a 30-day catch-up). Taken
per day-chunk into flat lists of numbers, they are what the writer needs and nothing more:
the start (epoch µs), channel id, value, and the meter's status byte with the rollover flag.
What the writer adds later (backup channel, large clock corrections) is added there.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from cgm.storage import Quality
from cgm.storage.common import channel_id
from drivers.base import Channel, ProfileEntry

HOUR = timedelta(hours=1)
# Channel (a StrEnum) and its name hash alike: one lookup serves drivers giving either.
CHANNEL_IDS: dict[object, int] = {ch: channel_id(ch) for ch in Channel}
ROLLOVER = int(Quality.REGISTER_ROLLOVER)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def epoch_us(t: datetime) -> int:
    """Microseconds since the epoch of an aware datetime (a naive one is refused: its zone
    would be a guess, and Colombia is UTC−5)."""
    if t.tzinfo is None:
        raise ValueError(f"{t.isoformat()} is naive (needs a time zone)")
    return (t - _EPOCH) // _US


class ProfileColumns:
    """Hourly entries as columns, one value per position; ``entries`` counts the entries."""

    __slots__ = ("start", "channel", "value", "flags", "entries")

    def __init__(self) -> None:
        self.start: list[int] = []
        self.channel: list[int] = []
        self.value: list[float] = []
        self.flags: list[int] = []  # status byte | REGISTER_ROLLOVER
        self.entries = 0

    def __len__(self) -> int:
        return len(self.value)

    def add(self, entries: Sequence[ProfileEntry]) -> list[ProfileEntry]:
        """Take the hourly ``entries``; return the others (sub-hourly, or a chunk with an
        unknown channel or a naive time: the writer's entry path refuses those with the
        reason, as before)."""
        t, c, v, q = self.start, self.channel, self.value, self.flags
        first, rest, taken = len(c), [], 0
        try:
            for e in entries:
                if e.period != HOUR:
                    rest.append(e)
                    continue
                values = e.values
                n = len(values)
                t.extend([epoch_us(e.start)] * n)
                c.extend(map(CHANNEL_IDS.get, values))
                v.extend(values.values())
                flags = e.status & 0xFF
                if e.rollover:
                    q.extend(flags | ROLLOVER if ch in e.rollover else flags for ch in values)
                else:
                    q.extend([flags] * n)
                taken += 1
            if None in c[first:]:
                raise ValueError("unknown channel")
        except ValueError:
            for col in (t, c, v, q):
                del col[first:]
            return list(entries)
        self.entries += taken
        return rest

    def first_start(self) -> datetime | None:
        return _EPOCH + min(self.start) * _US if self.start else None
