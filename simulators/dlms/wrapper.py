"""The IEC 62056-47 TCP wrapper as the simulated meter speaks it: written from the standard.

Each PDU is an 8-byte header (version 1, source wPort, destination wPort, APDU length, all
16-bit big-endian) followed by the APDU. Deliberately not the driver's
``drivers/dlms/transport.py``: a simulator sharing the driver's framing would agree with its
mistakes instead of catching them.
"""

from __future__ import annotations

import struct

VERSION = 1
_HEADER = struct.Struct(">HHHH")


class WrapperError(Exception):
    """Not a wrapper PDU (wrong version)."""


def wrap(source: int, destination: int, apdu: bytes) -> bytes:
    return _HEADER.pack(VERSION, source, destination, len(apdu)) + apdu


def unwrap(frame: bytes) -> tuple[int, int, bytes]:
    """(source wPort, destination wPort, APDU) of one whole wrapper PDU."""
    version, source, destination, length = _HEADER.unpack_from(frame)
    if version != VERSION:
        raise WrapperError(f"wrapper version {version}")
    if len(frame) != _HEADER.size + length:
        raise WrapperError(f"wrapper length {length} for {len(frame) - _HEADER.size} bytes")
    return source, destination, frame[_HEADER.size :]
