"""IEC 62056-47 TCP wrapper on an asyncio Protocol.

dlms-cosem ships only a blocking TCP transport (one thread per session); the CGM holds many
sessions at once, so this speaks the 8-byte wrapper (version, source wPort, destination
wPort, length) directly and hands whole APDUs to the sans-I/O core. It is an
``asyncio.Protocol`` rather than streams: a wrapper PDU is cut from the bytes as they arrive
in the loop's callback and handed to the waiting request, with no ``StreamReader`` and two
``readexactly`` futures per answer (streams were ~15 % of the driver's CPU per session).
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque

from .cosem import WRAPPER_VERSION

HEADER = struct.Struct(">HHHH")


class WrapperError(Exception):
    """A frame that is not a valid wrapper PDU (bad version, wrong ports)."""


def wrap(source: int, destination: int, apdu: bytes) -> bytes:
    if len(apdu) > 0xFFFF:
        raise ValueError("APDU longer than the wrapper length field allows")
    return HEADER.pack(WRAPPER_VERSION, source, destination, len(apdu)) + apdu


class _Link(asyncio.Protocol):
    """Cuts wrapper PDUs from the TCP stream; a request awaits the next one."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.frames: deque[tuple[int, int, bytes]] = deque()
        self.failure: Exception | None = None  # a bad frame or the end of the connection
        self.waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while len(buffer) >= HEADER.size and self.failure is None:
            version, source, destination, length = HEADER.unpack_from(buffer)
            if version != WRAPPER_VERSION:
                self.failure = WrapperError(
                    f"wrapper version {version:#06x}, expected {WRAPPER_VERSION}"
                )
                break
            end = HEADER.size + length
            if len(buffer) < end:
                break
            self.frames.append((source, destination, bytes(buffer[HEADER.size : end])))
            del buffer[:end]
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.failure is None:
            self.failure = exc or ConnectionResetError("the meter closed the connection")
        self._wake()

    def eof_received(self) -> bool:
        return False  # close our side too

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done() and (self.frames or self.failure):
            waiter.set_result(None)


class WrapperTransport:
    """One TCP connection from a client SAP to a server logical device."""

    def __init__(self, client_sap: int, server_address: int) -> None:
        self.client_sap = client_sap
        self.server_address = server_address
        self._link: _Link | None = None

    async def open(self, host: str, port: int) -> None:
        _, self._link = await asyncio.get_running_loop().create_connection(_Link, host, port)

    @property
    def is_open(self) -> bool:
        link = self._link
        return link is not None and link.transport is not None and not link.transport.is_closing()

    async def request(self, apdu: bytes) -> bytes:
        """Send one APDU and return the APDU that answers it."""
        link = self._link
        if link is None or link.transport is None:
            raise ConnectionError("transport is closed")
        frames = link.frames
        frames.clear()  # nothing unasked-for counts as the answer
        link.transport.write(wrap(self.client_sap, self.server_address, apdu))
        while not frames:  # next_frame, inlined: one coroutine less per request
            if link.failure is not None:
                raise link.failure
            link.waiter = asyncio.get_running_loop().create_future()
            try:
                await link.waiter
            finally:
                link.waiter = None
        source, destination, answer = frames.popleft()
        if source != self.server_address or destination != self.client_sap:
            raise WrapperError(
                f"answer addressed {source}->{destination}, "
                f"expected {self.server_address}->{self.client_sap}"
            )
        return answer

    async def close(self) -> None:
        link, self._link = self._link, None
        if link is not None and link.transport is not None:
            link.transport.close()
