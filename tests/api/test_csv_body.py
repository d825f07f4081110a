"""The CSV body is built column-wise; it must be byte for byte what the standard library's
csv writer gives for the same readings, awkward serials (comma, quote, newline) included."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from cgm.api import encode
from cgm.storage.common import CHANNELS_BY_ID
from cgm.storage.readings import STORED_DTYPE


def reference(meters, arr: np.ndarray) -> bytes:
    """The former body: ``csv.writer`` line by line (times as ``iso_utc`` formats them)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(encode.CSV_HEADER)
    for mid, serial, role, _active in meters:
        a = arr[arr["meter_id"] == mid]
        w.writerows(
            (serial, role, CHANNELS_BY_ID[ch].value, t, repr(v), q,
             "|".join(encode.flag_names(q)), ver, c)
            for ch, t, v, q, ver, c in zip(
                a["channel"].tolist(), encode.iso_utc(a["interval_start"], "Z"),
                a["value"].tolist(), a["quality"].tolist(), a["version"].tolist(),
                encode.iso_utc(a["collected_at"], "Z"), strict=True,
            )
        )  # fmt: skip
    return buf.getvalue().encode()


@pytest.mark.parametrize("serials", [("P1", "B2"), ("P,1", 'B"2'), ("x\ny", "")])
def test_csv_body_is_what_csv_writer_writes(serials) -> None:
    rng = np.random.default_rng(0)
    n = 2000
    a = np.empty(n, dtype=STORED_DTYPE)
    a["meter_id"] = np.repeat([5, 9], n // 2)
    a["channel"] = rng.integers(1, 5, n)
    a["interval_start"] = np.datetime64("2025-01-01T05:00", "us") + np.arange(n).astype("m8[h]")
    a["value"] = rng.uniform(0, 1e6, n) * rng.choice([1, 1e-9, 1e12, 0], n)
    a["quality"] = rng.choice([0, 1, 0x80, 0x81], n)
    a["version"] = rng.integers(1, 4, n)
    a["collected_at"] = a["interval_start"] + np.timedelta64(1234567, "us") * rng.integers(0, 2, n)
    meters = [(5, serials[0], "principal", True), (9, serials[1], "backup", False),
              (11, "no readings", "backup", True)]  # fmt: skip
    assert encode.csv_body(meters, a) == reference(meters, a)
    empty = np.empty(0, dtype=STORED_DTYPE)
    assert encode.csv_body(meters, empty) == reference(meters, empty)
