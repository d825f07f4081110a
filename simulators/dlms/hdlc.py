"""Server side of HDLC (IEC 62056-46) for the simulated meter, over a TCP connection.

Written from the standard, not from dlms-cosem's client-side HDLC that the driver uses, so a
framing mistake in one shows up against the other (Gurux's HDLC server checks the driver
too). Frame format type 3, FCS/HCS = CRC-16/X.25, window 1, 128-byte information fields,
segmentation both ways (an RR per segment), SNRM/UA, DISC/UA.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

FLAG = 0x7E
LLC_REQUEST = b"\xe6\xe6\x00"
LLC_RESPONSE = b"\xe6\xe7\x00"
MAX_INFO = 128
SNRM, UA, DISC, DM = 0x83, 0x63, 0x43, 0x0F  # without the P/F bit (0x10)
PF = 0x10


def fcs16(data: bytes) -> int:
    """CRC-16/X.25 (ISO/IEC 13239): reflected polynomial 0x8408, init and final xor 0xFFFF."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc ^ 0xFFFF


def encode_address(upper: int, lower: int | None, size: int) -> bytes:
    """Server address of ``size`` bytes (1: upper; 2: upper, lower; 4: two bytes each)."""
    if size == 1:
        parts = [upper]
    elif size == 2:
        parts = [upper, lower or 0]
    else:
        parts = [upper >> 7, upper & 0x7F, (lower or 0) >> 7, (lower or 0) & 0x7F]
    out = bytearray(p << 1 for p in parts)
    out[-1] |= 1
    return bytes(out)


def decode_address(data: bytes, at: int) -> tuple[int, int | None, int, int]:
    """(upper, lower, size, next position) of the address starting at ``at``."""
    size = 0
    while True:
        if at + size >= len(data) or size >= 4:
            raise ValueError("HDLC address longer than 4 bytes")
        size += 1
        if data[at + size - 1] & 1:
            break
    if size == 3:
        raise ValueError("HDLC address of 3 bytes")
    parts = [b >> 1 for b in data[at : at + size]]
    if size == 1:
        return parts[0], None, 1, at + 1
    if size == 2:
        return parts[0], parts[1], 2, at + 2
    return parts[0] << 7 | parts[1], parts[2] << 7 | parts[3], 4, at + 4


@dataclass
class Frame:
    server: tuple[int, int | None, int]  # upper, lower, size
    client: int
    control: int
    info: bytes
    segmented: bool


def parse_frame(raw: bytes) -> Frame:
    """A client-to-server frame (flags included); raises ValueError if anything is off."""
    if len(raw) < 9 or raw[0] != FLAG or raw[-1] != FLAG:
        raise ValueError("not a flagged HDLC frame")
    body = raw[1:-1]
    if body[0] >> 4 != 0xA:
        raise ValueError("not frame format type 3")
    length = ((body[0] & 0x07) << 8) | body[1]
    if length != len(body):
        raise ValueError(f"length field {length}, frame has {len(body)}")
    if fcs16(body[:-2]) != int.from_bytes(body[-2:], "little"):
        raise ValueError("bad FCS")
    upper, lower, size, at = decode_address(body, 2)
    client_raw = body[at]
    if not client_raw & 1:
        raise ValueError("client address longer than one byte")
    control = body[at + 1]
    header_end = at + 2
    info = b""
    if len(body) > header_end + 2:  # an information field, after its HCS
        if fcs16(body[:header_end]) != int.from_bytes(body[header_end : header_end + 2], "little"):
            raise ValueError("bad HCS")
        info = bytes(body[header_end + 2 : -2])
    return Frame((upper, lower, size), client_raw >> 1, control, info, bool(body[0] & 0x08))


def build_frame(frame: Frame) -> bytes:
    """A server-to-client frame: destination = client, source = server."""
    upper, lower, size = frame.server
    address = bytes([(frame.client << 1) | 1]) + encode_address(upper, lower, size)
    length = 2 + len(address) + 1 + (2 + len(frame.info) if frame.info else 0) + 2
    head = bytes([0xA0 | (0x08 if frame.segmented else 0) | (length >> 8), length & 0xFF])
    head += address + bytes([frame.control])
    body = head
    if frame.info:
        body += fcs16(head).to_bytes(2, "little") + frame.info
    body += fcs16(body).to_bytes(2, "little")
    return bytes([FLAG]) + body + bytes([FLAG])


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    """One frame from its format field's length (stray flags between frames skipped)."""
    byte = await reader.readexactly(1)
    while byte[0] == FLAG:
        byte = await reader.readexactly(1)
    second = await reader.readexactly(1)
    length = ((byte[0] & 0x07) << 8) | second[0]
    rest = await reader.readexactly(max(length - 2, 0) + 1)
    return bytes([FLAG]) + byte + second + rest


class HdlcLink:
    """One HDLC link of one TCP connection: sequence numbers and segment reassembly."""

    def __init__(
        self, accepts: Callable[[int, int | None, int], bool], max_receive: int = MAX_INFO
    ) -> None:
        self.accepts = accepts  # (upper, lower, size) -> is this one of our devices?
        self.max_receive = max_receive  # announced in the UA; longer I-frames are discarded
        self.connected = False
        self.vs = 0  # next send sequence number
        self.vr = 0  # next expected receive sequence number
        self.inbound = bytearray()
        self.server: tuple[int, int | None, int] | None = None
        self.client = 0

    async def serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        answer: Callable[[int, int, bytes], asyncio.Future[bytes | None] | object],
    ) -> None:
        """Read frames until EOF; ``answer(upper, client, apdu)`` returns the APDU to send
        (``None``: stay silent; raise ConnectionResetError to drop the line)."""
        while True:
            try:
                frame = parse_frame(await read_frame(reader))
            except ValueError:
                continue  # a damaged frame is discarded (IEC 62056-46); the client retries
            if not self.accepts(*frame.server):
                continue  # another station on the line
            self.server, self.client = frame.server, frame.client
            control = frame.control & ~PF
            if control == SNRM:
                self.connected, self.vs, self.vr = True, 0, 0
                self.inbound.clear()
                await self._send(writer, UA | PF, _link_parameters(self.max_receive))
            elif control == DISC:
                was = self.connected
                self.connected = False
                await self._send(writer, (UA if was else DM) | PF, b"")
            elif not self.connected:
                await self._send(writer, DM | PF, b"")
            elif frame.control & 1 == 0:  # I-frame
                if len(frame.info) > self.max_receive:
                    continue  # longer than announced: a small meter's buffer overflows
                if (frame.control >> 1) & 7 != self.vr:
                    continue  # out of sequence: a real meter would send RR/REJ; ignore
                self.vr = (self.vr + 1) % 8
                self.inbound += frame.info
                if frame.segmented:
                    await self._send(writer, (self.vr << 5) | PF | 0x01, b"")  # RR
                    continue
                request, self.inbound = bytes(self.inbound), bytearray()
                if not request.startswith(LLC_REQUEST):
                    continue
                reply = await answer(frame.server[0], frame.client, request[3:])  # type: ignore[misc]
                if reply is not None:
                    await self._send_segments(reader, writer, LLC_RESPONSE + reply)
            # RR outside a segmented answer and anything else: nothing to do.

    async def _send_segments(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
    ) -> None:
        chunks = [data[i : i + MAX_INFO] for i in range(0, len(data), MAX_INFO)] or [b""]
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            control = (self.vr << 5) | PF | (self.vs << 1)
            self.vs = (self.vs + 1) % 8
            await self._send(writer, control, chunk, segmented=not last)
            if not last:  # window 1: wait for the client's RR before the next segment
                while True:
                    ack = parse_frame(await read_frame(reader))
                    if ack.control & 0x0F == 0x01:
                        break

    async def _send(
        self, writer: asyncio.StreamWriter, control: int, info: bytes, segmented: bool = False
    ) -> None:
        assert self.server is not None
        writer.write(build_frame(Frame(self.server, self.client, control, info, segmented)))
        with contextlib.suppress(ConnectionError):
            await writer.drain()


def _link_parameters(max_receive: int) -> bytes:
    """UA information field: max info length TX 128 and RX ``max_receive``, window 1."""
    body = bytes([0x05, 0x01, MAX_INFO, 0x06, 0x01, max_receive])
    body += bytes([0x07, 0x04, 0, 0, 0, 1, 0x08, 0x04, 0, 0, 0, 1])
    return bytes([0x81, 0x80, len(body)]) + body
