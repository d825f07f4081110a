"""The simulated gateway's push connection: a publish-only MQTT 5 client (QoS 1).

Hand-written because a gateway pushing for thousands of meters at the top of the hour spent
most of its CPU in aiomqtt/paho per message (a future and a ``wait_for`` per publish, paho's
packet and ``Properties`` objects for every PUBACK); here a PUBLISH is bytes built with
``struct`` and PUBACKs are counted in the protocol's callback. It is the simulator's own code
(written from MQTT 5.0, not shared with the CGM's client), used only for pushes: commands and
answers keep aiomqtt.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct

_CONNECT, _CONNACK, _PUBLISH_QOS1, _PUBACK, _DISCONNECT = 0x10, 0x20, 0x32, 0x40, 0xE0
# CONNACK property sizes (MQTT 5.0, 3.2.2.3), to find Receive Maximum (0x21) among them:
# fixed sizes, or "s" for a length-prefixed string/binary, "p" for a string pair.
# fmt: off
_PROPS = {0x11: 4, 0x21: 2, 0x24: 1, 0x25: 1, 0x27: 4, 0x22: 2, 0x28: 1, 0x29: 1, 0x2A: 1,
          0x13: 2, 0x12: "s", 0x1F: "s", 0x1A: "s", 0x1C: "s", 0x15: "s", 0x16: "s", 0x26: "p"}
# fmt: on


def receive_maximum(connack: bytes) -> int:
    """The broker's Receive Maximum from a CONNACK body (65,535 when absent)."""
    length, shift, i = 0, 0, 2
    while True:
        byte = connack[i]
        i += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    end = i + length
    while i < end:
        ident = connack[i]
        i += 1
        size = _PROPS.get(ident)
        if size is None:
            break
        if ident == 0x21:
            return max(1, struct.unpack_from("!H", connack, i)[0])
        if size == "s":
            size = 2 + struct.unpack_from("!H", connack, i)[0]
        elif size == "p":
            first = 2 + struct.unpack_from("!H", connack, i)[0]
            size = first + 2 + struct.unpack_from("!H", connack, i + first)[0]
        i += int(size)
    return 65535


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


class Publisher(asyncio.Protocol):
    """``await open(...)``; ``await publish(topic, payload)`` (QoS 1, no properties);
    ``await flushed()`` returns once the broker acknowledged everything sent."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._next_id = 0
        self._unacked: set[int] = set()
        self._connack: asyncio.Future[bytes] | None = None
        self._drained = asyncio.Event()
        self._drained.set()
        self._room = asyncio.Event()  # set while fewer than the broker's maximum are unacked
        self._room.set()
        self.in_flight_max = 65535
        self.lost: Exception | None = None

    async def open(
        self,
        host: str,
        port: int,
        client_id: str,
        *,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        timeout: float = 10.0,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._connack = loop.create_future()
        async with asyncio.timeout(timeout):
            await loop.create_connection(lambda: self, host, port, ssl=tls)
            flags = 0x02 | (0x80 if username is not None else 0) | (0x40 if password else 0)
            # Keep-alive 0: the connection idles between hourly pushes without pings.
            body = _utf8("MQTT") + bytes((5, flags)) + struct.pack("!H", 0) + b"\x00"
            body += _utf8(client_id)
            if username is not None:
                body += _utf8(username)
            if password is not None:
                body += _utf8(password)
            self._write(bytes((_CONNECT,)) + _varint(len(body)) + body)
            ack = await self._connack
        if len(ack) < 2 or ack[1] >= 0x80:
            self.close()
            raise ConnectionError(f"broker refused the push connection ({ack[1:2].hex()})")
        self.in_flight_max = receive_maximum(ack) if len(ack) > 2 else 65535

    async def publish(self, topic: bytes, payload: bytes) -> None:
        """Send one QoS 1 PUBLISH (``topic``: the UTF-8 topic name), waiting first while the
        broker's Receive Maximum of unacknowledged ones are in flight."""
        while len(self._unacked) >= self.in_flight_max and self.lost is None:
            self._room.clear()
            await self._room.wait()
        if self.lost is not None:
            raise ConnectionError(f"push connection lost: {self.lost}")
        self._next_id = self._next_id % 0xFFFF + 1
        pid = self._next_id
        body_len = 2 + len(topic) + 2 + 1 + len(payload)  # topic, id, no properties
        self._unacked.add(pid)
        self._drained.clear()
        self._write(b"".join((
            bytes((_PUBLISH_QOS1,)), _varint(body_len), struct.pack("!H", len(topic)), topic,
            struct.pack("!H", pid), b"\x00", payload,
        )))  # fmt: skip

    async def flushed(self, timeout: float = 60.0) -> None:
        async with asyncio.timeout(timeout):
            await self._drained.wait()
        if self.lost is not None and self._unacked:
            raise ConnectionError(f"push connection lost: {self.lost}")

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(bytes((_DISCONNECT, 0)))
            self._transport.close()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionError("closed")
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(self.lost)
        self._drained.set()
        self._room.set()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        while len(buf) - pos >= 2:
            length, shift, i = 0, 0, pos + 1
            while i < len(buf):
                byte = buf[i]
                i += 1
                length |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    break
                shift += 7
            else:
                break
            if i + length > len(buf):
                break
            kind, body = buf[pos] & 0xF0, bytes(buf[i : i + length])
            pos = i + length
            if kind == _PUBACK:
                self._unacked.discard((body[0] << 8) | body[1])
                if len(self._unacked) < self.in_flight_max:
                    self._room.set()
                if not self._unacked:
                    self._drained.set()
            elif kind == _CONNACK and self._connack is not None and not self._connack.done():
                self._connack.set_result(body)
        del buf[:pos]

    def _write(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            raise ConnectionError("push connection not open")
        self._transport.write(data)
