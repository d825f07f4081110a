"""The simulated gateway's MQTT 5 connections: a small client of the simulator's own.

Hand-written because a gateway answering and pushing for thousands of meters spent most of
its CPU in aiomqtt/paho per message (a task, a future and a ``wait_for`` per publish, paho's
packet and ``Properties`` objects for every PUBLISH and PUBACK; benchmarks/README.md, "MQTT
pushes" and "Protocol CPU per session"). Here a PUBLISH is bytes built with ``struct`` and
what arrives is cut from the stream in the protocol's callback. It is the simulator's own
code, written from MQTT 5.0 and not shared with the CGM's client (``drivers/mqtt/lean.py``):
both meet only through a real broker (Mosquitto or cgm's embedded one) in the tests. It does
what a gateway needs: CONNECT (account, TLS, will), SUBSCRIBE, PUBLISH in (QoS 0/1, PUBACK
at once; Response Topic and Correlation Data read) and out (QoS 1, within the broker's
Receive Maximum, optional retain and properties), PINGREQ keep-alive.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
import struct
from collections.abc import Callable

_CONNECT, _CONNACK, _PUBLISH, _PUBACK, _SUBSCRIBE, _SUBACK = 0x10, 0x20, 0x30, 0x40, 0x82, 0x90
_PINGREQ, _DISCONNECT = bytes((0xC0, 0)), bytes((0xE0, 0))
# CONNACK property sizes (MQTT 5.0, 3.2.2.3), to find Receive Maximum (0x21) among them:
# fixed sizes, or "s" for a length-prefixed string/binary, "p" for a string pair.
# fmt: off
_PROPS = {0x11: 4, 0x21: 2, 0x24: 1, 0x25: 1, 0x27: 4, 0x22: 2, 0x28: 1, 0x29: 1, 0x2A: 1,
          0x13: 2, 0x12: "s", 0x1F: "s", 0x1A: "s", 0x1C: "s", 0x15: "s", 0x16: "s", 0x26: "p"}
# PUBLISH property sizes (3.3.2.3); "v" a variable byte integer.
_PUBLISH_PROPS = {0x01: 1, 0x02: 4, 0x23: 2, 0x08: "s", 0x09: "s", 0x26: "p", 0x0B: "v",
                  0x03: "s"}
# fmt: on

# (topic, payload, response topic or None, correlation data or None)
OnRequest = Callable[[str, bytes, str | None, bytes | None], None]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(data: bytes | bytearray, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7


def _utf8(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def receive_maximum(connack: bytes) -> int:
    """The broker's Receive Maximum from a CONNACK body (65,535 when absent)."""
    length, i = _read_varint(connack, 2)
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


def _request_properties(props: bytes) -> tuple[str | None, bytes | None]:
    """(Response Topic, Correlation Data) of a PUBLISH's raw properties."""
    response, corr, i = None, None, 0
    while i < len(props):
        ident = props[i]
        i += 1
        size = _PUBLISH_PROPS.get(ident)
        if size is None:
            raise ValueError(f"unknown PUBLISH property 0x{ident:02x}")
        if size == "v":
            _, i = _read_varint(props, i)
            continue
        if size == "s":
            n = struct.unpack_from("!H", props, i)[0]
            if ident == 0x08:
                response = props[i + 2 : i + 2 + n].decode()
            elif ident == 0x09:
                corr = bytes(props[i + 2 : i + 2 + n])
            size = 2 + n
        elif size == "p":
            first = 2 + struct.unpack_from("!H", props, i)[0]
            size = first + 2 + struct.unpack_from("!H", props, i + first)[0]
        i += int(size)
    return response, corr


def answer_properties(content_type: str, correlation: bytes | None) -> bytes:
    props = b"\x03" + _utf8(content_type)
    if correlation is not None:
        props += b"\x09" + _utf8(correlation)
    return props


class Publisher(asyncio.Protocol):
    """``await open(...)``; ``send(topic, payload, ...)`` (QoS 1, queued beyond the broker's
    Receive Maximum) or ``await publish(...)``; ``await flushed()`` returns once the broker
    acknowledged everything sent; ``await subscribe(filters)``; requests arriving on the
    subscriptions call ``on_request``."""

    def __init__(self, on_request: OnRequest | None = None) -> None:
        self.on_request = on_request
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._next_id = 0
        self._unacked: set[int] = set()
        self._backlog: collections.deque[tuple[int, bytes]] = collections.deque()
        self._connack: asyncio.Future[bytes] | None = None
        self._subacks: dict[int, asyncio.Future[bytes]] = {}
        self._drained = asyncio.Event()
        self._drained.set()
        self._ping: asyncio.TimerHandle | None = None
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
        will: tuple[str, bytes] | None = None,  # (topic, payload): QoS 1, retained
        keepalive: int = 0,
        timeout: float = 10.0,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._connack = loop.create_future()
        async with asyncio.timeout(timeout):
            await loop.create_connection(lambda: self, host, port, ssl=tls)
            flags = 0x02 | (0x80 if username is not None else 0) | (0x40 if password else 0)
            if will is not None:
                flags |= 0x04 | 0x08 | 0x20  # will, QoS 1, retained
            body = _utf8("MQTT") + bytes((5, flags)) + struct.pack("!H", keepalive) + b"\x00"
            body += _utf8(client_id)
            if will is not None:
                body += b"\x00" + _utf8(will[0]) + _utf8(will[1])
            if username is not None:
                body += _utf8(username)
            if password is not None:
                body += _utf8(password)
            self._write(bytes((_CONNECT,)) + _varint(len(body)) + body)
            ack = await self._connack
        if len(ack) < 2 or ack[1] >= 0x80:
            self.close()
            raise ConnectionError(f"broker refused the connection ({ack[1:2].hex()})")
        self.in_flight_max = receive_maximum(ack) if len(ack) > 2 else 65535
        if keepalive:
            self._keepalive(keepalive / 2)

    async def subscribe(self, filters: list[str], timeout: float = 10.0) -> None:
        """Subscribe at QoS 1, up to 100 filters a packet; every SUBACK checked."""
        loop = asyncio.get_running_loop()
        waits = []
        for i in range(0, len(filters), 100):
            self._next_id = self._next_id % 0xFFFF + 1
            pid = self._next_id
            fut = self._subacks[pid] = loop.create_future()
            waits.append(fut)
            body = struct.pack("!H", pid) + b"\x00"
            body += b"".join(_utf8(f) + b"\x01" for f in filters[i : i + 100])
            self._write(bytes((_SUBSCRIBE,)) + _varint(len(body)) + body)
        async with asyncio.timeout(timeout):
            for fut in waits:
                suback = await fut
                plen, pos = _read_varint(suback, 2)
                if any(code >= 0x80 for code in suback[pos + plen :]):
                    raise ConnectionError("the broker refused a subscription")

    def send(self, topic: bytes, payload: bytes, props: bytes = b"", retain: bool = False) -> None:
        """One QoS 1 PUBLISH (``topic``: UTF-8 bytes; ``props``: raw MQTT 5 properties)."""
        if self.lost is not None:
            raise ConnectionError(f"connection lost: {self.lost}")
        self._next_id = self._next_id % 0xFFFF + 1
        while self._next_id in self._unacked or self._next_id in self._subacks:
            self._next_id = self._next_id % 0xFFFF + 1
        pid = self._next_id
        plen = _varint(len(props))
        body_len = 2 + len(topic) + 2 + len(plen) + len(props) + len(payload)
        packet = b"".join((
            bytes((_PUBLISH | 0x02 | (1 if retain else 0),)), _varint(body_len),
            struct.pack("!H", len(topic)), topic, struct.pack("!H", pid), plen, props, payload,
        ))  # fmt: skip
        self._drained.clear()
        if len(self._unacked) >= self.in_flight_max:
            self._backlog.append((pid, packet))
            return
        self._unacked.add(pid)
        self._write(packet)

    async def publish(self, topic: bytes, payload: bytes) -> None:
        self.send(topic, payload)

    async def flushed(self, timeout: float = 60.0) -> None:
        async with asyncio.timeout(timeout):
            await self._drained.wait()
        if self.lost is not None and (self._unacked or self._backlog):
            raise ConnectionError(f"connection lost: {self.lost}")

    def close(self) -> None:
        if self._ping is not None:
            self._ping.cancel()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(_DISCONNECT)
            self._transport.close()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionError("closed")
        if self._ping is not None:
            self._ping.cancel()
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(self.lost)
        for fut in self._subacks.values():
            if not fut.done():
                fut.set_exception(self.lost)
        self._backlog.clear()
        self._drained.set()

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
            first, body = buf[pos], bytes(buf[i : i + length])
            pos = i + length
            self._packet(first, body)
        del buf[:pos]

    def _packet(self, first: int, body: bytes) -> None:
        kind = first & 0xF0
        if kind == _PUBACK:
            self._unacked.discard((body[0] << 8) | body[1])
            while self._backlog and len(self._unacked) < self.in_flight_max:
                pid, packet = self._backlog.popleft()
                self._unacked.add(pid)
                self._write(packet)
            if not self._unacked and not self._backlog:
                self._drained.set()
        elif kind == _PUBLISH:
            qos = (first >> 1) & 3
            tlen = (body[0] << 8) | body[1]
            topic, pos = body[2 : 2 + tlen].decode(), 2 + tlen
            if qos:
                self._write(bytes((_PUBACK, 2, body[pos], body[pos + 1])))
                pos += 2
            plen, pos = _read_varint(body, pos)
            try:
                response, corr = _request_properties(body[pos : pos + plen])
            except (ValueError, IndexError, UnicodeDecodeError):
                return  # a request the meter cannot read is not answered
            if self.on_request is not None:
                self.on_request(topic, body[pos + plen :], response, corr)
        elif kind == _SUBACK:
            fut = self._subacks.pop((body[0] << 8) | body[1], None)
            if fut is not None and not fut.done():
                fut.set_result(body)
        elif kind == _CONNACK and self._connack is not None and not self._connack.done():
            self._connack.set_result(body)

    def _keepalive(self, every: float) -> None:
        if self.lost is None:
            if self._ping is not None:
                self._write(_PINGREQ)
            self._ping = asyncio.get_running_loop().call_later(every, self._keepalive, every)

    def _write(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            raise ConnectionError("connection not open")
        self._transport.write(data)
