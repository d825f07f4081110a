"""HDLC framing (IEC 62056-46) over a TCP stream, for meters behind modems or terminal servers.

The frames, FCS/HCS, addresses, sequence numbers and the link state machine are dlms-cosem's
sans-I/O ``dlms_cosem.hdlc`` (``HdlcConnection`` and its frame classes). dlms-cosem's own
``HdlcTransport`` is blocking, so this module drives the same objects on asyncio streams, as
the wrapper transport does. The SNRM proposes nothing, so the defaults of IEC 62056-46 apply
(window 1, 128-byte information fields) unless the meter's UA names a smaller information
field it can receive, which is then the most we send.

Server addresses come in 1, 2 or 4 bytes (upper = logical device, lower = physical device);
the client address is one byte (the client SAP).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from dlms_cosem.hdlc import address, frames
from dlms_cosem.hdlc import state as hdlc_state
from dlms_cosem.hdlc.connection import HdlcConnection

LLC_REQUEST = b"\xe6\xe6\x00"
LLC_RESPONSE = b"\xe6\xe7\x00"
FLAG = 0x7E
MAX_INFO = 128  # default information field length (IEC 62056-46 6.4.4.4.3.2)
ADDRESS_SIZES = (1, 2, 4)


class HdlcError(Exception):
    """A frame that does not parse, or one that the link state does not allow."""


@dataclass(frozen=True)
class HdlcAddressing:
    """Client address (1 byte) and server upper/lower address in 1, 2 or 4 bytes."""

    client: int
    server_upper: int = 1
    server_lower: int | None = None
    size: int = 1

    def __post_init__(self) -> None:
        if self.size not in ADDRESS_SIZES:
            raise ValueError(f"HDLC server address size {self.size}: must be 1, 2 or 4")
        if not 0 <= self.client <= 0x7F:
            raise ValueError(f"HDLC client address {self.client} does not fit one byte")
        if self.size == 1:
            if self.server_lower is not None:
                raise ValueError("a 1-byte HDLC server address has no lower (physical) part")
            if not 0 < self.server_upper <= 0x7F:
                raise ValueError(f"HDLC server upper address {self.server_upper}: 1 … 127")
            return
        limit = 0x7F if self.size == 2 else 0x3FFF
        if self.server_lower is None or not 0 < self.server_lower <= limit:
            raise ValueError(
                f"a {self.size}-byte HDLC server address needs a lower address 1 … {limit}"
            )
        if not 0 < self.server_upper <= limit:
            raise ValueError(f"HDLC server upper address {self.server_upper}: 1 … {limit}")

    def server(self) -> address.HdlcAddress:
        return address.HdlcAddress(
            logical_address=self.server_upper,
            physical_address=self.server_lower,
            address_type="server",
            extended_addressing=self.size == 4,
        )

    def client_address(self) -> address.HdlcAddress:
        return address.HdlcAddress(logical_address=self.client, address_type="client")


class HdlcTransport:
    """One TCP connection carrying one HDLC link to one logical device."""

    def __init__(self, addressing: HdlcAddressing, max_info: int = MAX_INFO) -> None:
        self.addressing = addressing
        self.max_info = max_info
        self._server = addressing.server()
        self._client = addressing.client_address()
        self._link = HdlcConnection(self._server, self._client, max_data_size=max_info)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.frames_sent = 0
        self.frames_received = 0

    @property
    def is_open(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def open(self, host: str, port: int) -> None:
        """TCP connect, then SNRM -> UA."""
        self._reader, self._writer = await asyncio.open_connection(host, port)
        snrm = frames.SetNormalResponseModeFrame(
            destination_address=self._server, source_address=self._client
        )
        await self._send(snrm)
        ua = await self._receive()
        if not isinstance(ua, frames.UnNumberedAcknowledgmentFrame):
            raise HdlcError(f"SNRM answered with {type(ua).__name__}, not UA")
        # A meter with smaller buffers says so in the UA: never send more than it takes.
        receive = link_parameters(bytes(ua.payload or b"")).get(0x06)
        if receive is not None and 0 < receive < self.max_info:
            self.max_info = receive

    async def request(self, apdu: bytes) -> bytes:
        """Send one APDU (segmented as needed) and return the APDU that answers it."""
        if self._reader is None or self._writer is None:
            raise ConnectionError("transport is closed")
        out = LLC_REQUEST + apdu
        while out:
            chunk, out = out[: self.max_info], out[self.max_info :]
            await self._send(
                frames.InformationFrame(
                    destination_address=self._server,
                    source_address=self._client,
                    payload=chunk,
                    send_sequence_number=self._link.server_ssn,
                    receive_sequence_number=self._link.server_rsn,
                    segmented=bool(out),
                    final=True,
                )
            )
            if out:  # window 1: the meter acknowledges each segment with RR
                ack = await self._receive()
                if not isinstance(ack, frames.ReceiveReadyFrame):
                    raise HdlcError(f"segment answered with {type(ack).__name__}, not RR")
        answer = bytearray()
        while True:
            frame = await self._receive()
            if not isinstance(frame, frames.InformationFrame):
                raise HdlcError(f"expected an I-frame, got {type(frame).__name__}")
            answer += frame.payload or b""
            if not frame.segmented:
                break
            await self._send(  # window 1: ask for the next segment
                frames.ReceiveReadyFrame(
                    destination_address=self._server,
                    source_address=self._client,
                    receive_sequence_number=self._link.server_rsn,
                )
            )
        if not answer.startswith(LLC_RESPONSE):
            raise HdlcError(f"answer without the LLC response header: {bytes(answer[:3]).hex()}")
        return bytes(answer[len(LLC_RESPONSE) :])

    async def close(self) -> None:
        """DISC -> UA when the link is up (best effort), then close the socket."""
        writer, reader = self._writer, self._reader
        if writer is None:
            return
        try:
            if self._link.state.current_state is hdlc_state.IDLE and not writer.is_closing():
                await self._send(
                    frames.DisconnectFrame(
                        destination_address=self._server, source_address=self._client
                    )
                )
                await asyncio.wait_for(self._receive(), 2.0)
        except (HdlcError, OSError, ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            self._writer = self._reader = None
            writer.close()
            try:
                await writer.wait_closed()
            except (OSError, ConnectionError):
                pass
            del reader

    # --- frames -----------------------------------------------------------------------

    async def _send(self, frame: object) -> None:
        assert self._writer is not None
        try:
            data = self._link.send(frame)
        except Exception as exc:  # noqa: BLE001 - the link state refuses the frame
            raise HdlcError(f"cannot send {type(frame).__name__}: {exc}") from exc
        self._writer.write(data)
        await self._writer.drain()
        self.frames_sent += 1

    async def _receive(self) -> object:
        """Read exactly one frame (its length is in the format field) and parse it."""
        assert self._reader is not None
        raw = await read_frame(self._reader)
        self._link.receive_data(raw)
        try:
            event = self._link.next_event()
            # dlms-cosem looks for the closing flag by searching for 7E; a 7E inside the
            # information field makes it try a short frame first: let it search further.
            while event is hdlc_state.NEED_DATA and self._link.buffer_search_position < len(
                self._link.buffer
            ):
                event = self._link.next_event()
        except Exception as exc:  # noqa: BLE001 - sequence numbers or state out of step
            self._link.buffer = bytearray()
            raise HdlcError(f"bad HDLC frame {raw[:12].hex()}…: {exc}") from exc
        if event is hdlc_state.NEED_DATA:
            self._link.buffer = bytearray()
            raise HdlcError(f"HDLC frame does not parse: {raw[:12].hex()}…")
        self.frames_received += 1
        return event


def link_parameters(info: bytes) -> dict[int, int]:
    """HDLC parameter negotiation field (81 80 len, then id len value …), by parameter id:
    0x05 max information field the meter sends, 0x06 the largest it receives, 0x07/0x08
    window sizes. Empty or malformed: no parameters (the defaults apply)."""
    if len(info) < 3 or info[0] != 0x81 or info[1] != 0x80:
        return {}
    out: dict[int, int] = {}
    body, at = info[3 : 3 + info[2]], 0
    while at + 2 <= len(body):
        pid, size = body[at], body[at + 1]
        value = body[at + 2 : at + 2 + size]
        if len(value) != size:
            return {}
        out[pid] = int.from_bytes(value, "big")
        at += 2 + size
    return out


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    """One whole frame ``7E … 7E``; stray inter-frame flags are skipped."""
    first = await reader.readexactly(1)
    while first[0] == FLAG:
        head = await reader.readexactly(1)
        if head[0] != FLAG:
            break
    else:
        raise HdlcError(f"expected the HDLC flag 7e, got {first.hex()}")
    second = await reader.readexactly(1)
    if head[0] >> 4 != 0xA:
        raise HdlcError(f"not an HDLC frame format type 3: {head.hex()}{second.hex()}")
    length = ((head[0] & 0x07) << 8) | second[0]
    if length < 7:
        raise HdlcError(f"HDLC frame length {length} is too short")
    rest = await reader.readexactly(length - 2 + 1)  # rest of the frame and the closing flag
    if rest[-1] != FLAG:
        raise HdlcError("HDLC frame does not end with the flag")
    return b"\x7e" + head + second + rest
