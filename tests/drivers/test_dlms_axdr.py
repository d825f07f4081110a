"""The driver's A-XDR decoder gives what dlms-cosem's parser gives, and refuses what it can't.

``drivers/dlms/axdr.py`` replaces ``DlmsDataParser`` for speed; these tests hold it to the
library's results on every tag the library decodes, on nesting and long lengths, and check
that truncated data raises instead of yielding a short value.
"""

from __future__ import annotations

from datetime import datetime

import pytest
from dlms_cosem import dlms_data as d

from drivers.dlms import axdr


def _length(n: int) -> bytes:
    return bytes([n]) if n < 0x80 else bytes([0x82]) + n.to_bytes(2, "big")


# (encoding written out here from the A-XDR rules, the value dlms-cosem gives for it)
LEAVES: list[tuple[bytes, d.AbstractDlmsData]] = [
    (b"\x00", d.NullData(None)),
    (b"\x03\x01", d.BooleanData(True)),
    (b"\x03\x00", d.BooleanData(False)),
    (b"\x05" + (-123456).to_bytes(4, "big", signed=True), d.DoubleLongData(-123456)),
    (b"\x06" + (4_000_000_000).to_bytes(4, "big"), d.DoubleLongUnsignedData(4_000_000_000)),
    (b"\x09\x08\x00\x01serial", d.OctetStringData(b"\x00\x01serial")),
    (b"\x09" + _length(512) + bytes(range(256)) * 2, d.OctetStringData(bytes(range(256)) * 2)),
    (b"\x0a\x06SIM-4Q", d.VisibleStringData("SIM-4Q")),
    (b"\x0f\xfd", d.IntegerData(-3)),
    (b"\x10" + (-300).to_bytes(2, "big", signed=True), d.LongData(-300)),
    (b"\x11\xc8", d.UnsignedIntegerData(200)),
    (b"\x12\xff\xff", d.UnsignedLongData(65535)),
    (b"\x14" + (-(2**62)).to_bytes(8, "big", signed=True), d.Long64Data(-(2**62))),
    (b"\x15" + (2**64 - 1).to_bytes(8, "big"), d.UnsignedLong64Data(2**64 - 1)),
    (b"\x16\x1e", d.EnumData(30)),
]
DATE_TIME = bytes([25]) + bytes([0x07, 0xEA, 11, 30, 1, 13, 0, 0, 0, 0x01, 0x2C, 0])


def _nested(times: int = 50) -> tuple[bytes, d.AbstractDlmsData]:
    row_raw = b"\x02" + _length(12) + b"".join(r for r, _ in LEAVES[:12])
    row = d.DataStructure([v for _, v in LEAVES[:12]])
    inner_raw = b"\x02\x02\x01\x00\x01" + _length(len(LEAVES)) + b"".join(r for r, _ in LEAVES)
    inner = d.DataStructure([d.DataArray([]), d.DataArray([v for _, v in LEAVES])])
    items = [(row_raw, row), (inner_raw, inner), (row_raw, row)] * times
    raw = b"\x01" + _length(len(items)) + b"".join(r for r, _ in items)
    return raw, d.DataArray([v for _, v in items])


def _library(raw: bytes) -> d.AbstractDlmsData:
    parser = d.DlmsDataParser()
    return parser.parse(raw, limit=1)[0]


def _same(a: d.AbstractDlmsData, b: d.AbstractDlmsData) -> None:
    assert type(a) is type(b)
    if isinstance(a, d.DataArray | d.DataStructure):
        assert len(a.value) == len(b.value)
        for x, y in zip(a.value, b.value, strict=True):
            _same(x, y)
    elif isinstance(a.value, bytes | bytearray):
        assert bytes(a.value) == bytes(b.value)
    else:
        assert a.value == b.value


@pytest.mark.parametrize("case", [*LEAVES, _nested()], ids=lambda c: type(c[1]).__name__)
def test_decodes_as_dlms_cosem_does(case: tuple[bytes, d.AbstractDlmsData]) -> None:
    raw, value = case
    decoded = axdr.decode_one(raw)
    _same(decoded, _library(raw))
    _same(decoded, value)


def test_date_time_is_the_library_s() -> None:
    decoded = axdr.decode_one(DATE_TIME)
    assert isinstance(decoded, d.DateTimeData)
    assert decoded.value == _library(DATE_TIME).value
    assert isinstance(decoded.value[0], datetime)


def test_truncated_data_raises_at_every_cut() -> None:
    raw = _nested(1)[0]
    for cut in range(len(raw)):
        with pytest.raises((ValueError, IndexError)):
            axdr.decode_one(raw[:cut])


def test_trailing_bytes_raise() -> None:
    with pytest.raises(ValueError, match="trailing"):
        axdr.decode_one(b"\x12\x00\x05\x00")


@pytest.mark.parametrize("tag", [4, 12, 13, 19, 23, 24, 255, 7, 99])
def test_tags_the_library_does_not_decode_raise(tag: int) -> None:
    with pytest.raises(ValueError, match=f"tag {tag}"):
        axdr.decode_one(bytes([tag, 4, 0, 0, 0, 0]))
