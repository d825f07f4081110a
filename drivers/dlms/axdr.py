"""A-XDR ``Data`` decoding into dlms-cosem's own data classes, at a fraction of the cost.

Why not ``dlms_data.DlmsDataParser``: it copies a ``bytearray`` slice per field, looks every
tag up through a factory class and builds its results through several method calls per
value; decoding the answers of one hourly session took ~40 % of the driver's CPU per session
(a 30-day profile read is mostly this). The result here is the same: the library's
``dlms_data`` objects, for exactly the tags the library decodes (the others raise, as the
library's ``NotImplementedError`` did), so the rest of the driver and its tests see no
difference. ``tests/drivers/test_dlms_axdr.py`` checks every supported tag, nesting and
truncation against the library's parser.
"""

from __future__ import annotations

from dlms_cosem import dlms_data as d

_INT = "int"
_SIGNED = "signed"
_OCTETS = "octets"
_ASCII = "ascii"
_BOOL = "bool"
_LIB = "lib"  # the library's own from_bytes (date, time, date-time)

# tag -> (class, length or -1 for a variable length, how the value is read)
_SPECS: dict[int, tuple[type[d.BaseDlmsData], int, str]] = {
    3: (d.BooleanData, 1, _BOOL),
    5: (d.DoubleLongData, 4, _SIGNED),
    6: (d.DoubleLongUnsignedData, 4, _INT),
    9: (d.OctetStringData, -1, _OCTETS),
    10: (d.VisibleStringData, -1, _ASCII),
    15: (d.IntegerData, 1, _SIGNED),
    16: (d.LongData, 2, _SIGNED),
    17: (d.UnsignedIntegerData, 1, _INT),
    18: (d.UnsignedLongData, 2, _INT),
    20: (d.Long64Data, 8, _SIGNED),
    21: (d.UnsignedLong64Data, 8, _INT),
    22: (d.EnumData, 1, _INT),
    25: (d.DateTimeData, 12, _LIB),
    26: (d.DateData, 5, _LIB),
    27: (d.TimeData, 4, _LIB),
}
_NULL = 0
_ARRAY = 1
_STRUCTURE = 2


def length(buf: bytes, pos: int) -> tuple[int, int]:
    """A-XDR variable-length integer at ``pos``: (value, position after it)."""
    first = buf[pos]
    if first < 0x80:
        return first, pos + 1
    size = first & 0x7F
    end = pos + 1 + size
    if end > len(buf):
        raise ValueError("truncated A-XDR length")
    return int.from_bytes(buf[pos + 1 : end], "big"), end


def decode(buf: bytes, pos: int = 0) -> tuple[d.AbstractDlmsData, int]:
    """One ``Data`` value at ``pos``: (the library's data object, position after it).

    Raises ``ValueError`` (or ``IndexError``) on truncated data or a tag the library does
    not decode either.
    """
    tag = buf[pos]
    pos += 1
    if tag == _ARRAY or tag == _STRUCTURE:
        count, pos = length(buf, pos)
        items = []
        for _ in range(count):
            item, pos = decode(buf, pos)
            items.append(item)
        return (d.DataArray(items) if tag == _ARRAY else d.DataStructure(items)), pos
    if tag == _NULL:
        return d.NullData(None), pos
    spec = _SPECS.get(tag)
    if spec is None:
        raise ValueError(f"A-XDR tag {tag} is not decoded")
    cls, size, kind = spec
    if size < 0:
        size, pos = length(buf, pos)
    end = pos + size
    if end > len(buf):
        raise ValueError(f"truncated A-XDR data (tag {tag})")
    raw = buf[pos:end]
    if kind is _INT:
        value: object = int.from_bytes(raw, "big")
    elif kind is _SIGNED:
        value = int.from_bytes(raw, "big", signed=True)
    elif kind is _OCTETS:
        value = bytes(raw)
    elif kind is _ASCII:
        value = bytes(raw).decode("ascii")
    elif kind is _BOOL:
        value = bool(raw[0])
    else:
        return cls.from_bytes(bytes(raw)), end
    return cls(value), end


def decode_one(raw: bytes) -> d.AbstractDlmsData:
    """Exactly one ``Data`` value (trailing bytes are a damaged frame)."""
    value, end = decode(raw, 0)
    if end != len(raw):
        raise ValueError("trailing bytes after A-XDR data")
    return value
