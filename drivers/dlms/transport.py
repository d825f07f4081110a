"""IEC 62056-47 TCP wrapper over asyncio streams.

dlms-cosem ships only a blocking TCP transport (one thread per session); the CGM holds many
sessions at once, so this speaks the 8-byte wrapper (version, source wPort, destination
wPort, length) directly on asyncio streams and hands whole APDUs to the sans-I/O core.
"""

from __future__ import annotations

import asyncio
import struct

from .cosem import WRAPPER_VERSION

HEADER = struct.Struct(">HHHH")


class WrapperError(Exception):
    """A frame that is not a valid wrapper PDU (bad version, wrong ports)."""


def wrap(source: int, destination: int, apdu: bytes) -> bytes:
    if len(apdu) > 0xFFFF:
        raise ValueError("APDU longer than the wrapper length field allows")
    return HEADER.pack(WRAPPER_VERSION, source, destination, len(apdu)) + apdu


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    """(source wPort, destination wPort, APDU). Raises IncompleteReadError on EOF."""
    version, source, destination, length = HEADER.unpack(await reader.readexactly(HEADER.size))
    if version != WRAPPER_VERSION:
        raise WrapperError(f"wrapper version {version:#06x}, expected {WRAPPER_VERSION}")
    return source, destination, await reader.readexactly(length)


class WrapperTransport:
    """One TCP connection from a client SAP to a server logical device."""

    def __init__(self, client_sap: int, server_address: int) -> None:
        self.client_sap = client_sap
        self.server_address = server_address
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self, host: str, port: int) -> None:
        self._reader, self._writer = await asyncio.open_connection(host, port)

    @property
    def is_open(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def request(self, apdu: bytes) -> bytes:
        """Send one APDU and return the APDU that answers it."""
        if self._reader is None or self._writer is None:
            raise ConnectionError("transport is closed")
        self._writer.write(wrap(self.client_sap, self.server_address, apdu))
        await self._writer.drain()
        source, destination, answer = await read_frame(self._reader)
        if source != self.server_address or destination != self.client_sap:
            raise WrapperError(
                f"answer addressed {source}->{destination}, "
                f"expected {self.server_address}->{self.client_sap}"
            )
        return answer

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is None:
            return
        writer.close()
        try:
            await writer.wait_closed()
        except (OSError, ConnectionError):
            pass
