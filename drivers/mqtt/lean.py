"""A receive-only MQTT 5 client for the durable push subscription, on an asyncio.Protocol.

Hand-written on purpose, for one hot path: the meters' pushed hourly entries. Through
aiomqtt/paho each received PUBLISH cost the collector more CPU than decoding, verifying and
storing its entry together (paho reads a packet in several ``recv`` calls, builds a
``Properties`` object per PUBLISH by scanning every property name, and aiomqtt adds a queue
and a task wake-up per message; benchmarks/README.md, "MQTT pushes"). This client does only
what the subscription needs, from MQTT 5.0 (OASIS, 2019): CONNECT (account, TLS, clean start
off, session expiry), SUBSCRIBE, PUBLISH in at QoS 0/1 with PUBACK sent when the caller says
so (after the entries are stored), PINGREQ keep-alive, DISCONNECT. Packets are cut from the
stream in ``data_received``: a whole TCP read is parsed in one callback. Commands and answers
keep aiomqtt (``driver.BrokerConnection``); the broker side is proven by the tests against
Mosquitto and against cgm's embedded broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
from collections.abc import Callable

CONNECT, CONNACK, PUBLISH, PUBACK = 0x10, 0x20, 0x30, 0x40
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 0x82, 0x90, 0xC0, 0xD0, 0xE0
_PINGREQ = bytes((PINGREQ, 0))
_DISCONNECT = bytes((DISCONNECT, 0))

# (topic, payload, ack): ``ack()`` sends the PUBACK of a QoS 1 message (no-op for QoS 0).
OnMessage = Callable[[str, bytes, Callable[[], None]], None]


class MqttRefused(Exception):
    """The broker refused the connection or a subscription (``reason`` is MQTT 5's code)."""

    def __init__(self, what: str, reason: int) -> None:
        super().__init__(f"{what} refused by the broker (reason 0x{reason:02x})")
        self.rc = reason


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _varint(len(body)) + body


def connect_packet(
    client_id: str,
    *,
    username: str | None,
    password: str | None,
    keepalive: int,
    clean_start: bool,
    session_expiry: int,
) -> bytes:
    flags = (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    flags |= 0x02 if clean_start else 0
    props = b"\x11" + struct.pack("!I", session_expiry) if session_expiry else b""
    body = _str("MQTT") + bytes((5, flags)) + struct.pack("!H", keepalive)
    body += _varint(len(props)) + props + _str(client_id)
    if username is not None:
        body += _str(username)
    if password is not None:
        body += _str(password.encode())
    return _packet(CONNECT, body)


def subscribe_packet(packet_id: int, topic_filter: str, qos: int) -> bytes:
    return _packet(SUBSCRIBE, struct.pack("!H", packet_id) + b"\x00" + _str(topic_filter)
                   + bytes((qos,)))  # fmt: skip


class LeanSubscriber(asyncio.Protocol):
    """One MQTT 5 connection that receives publishes and acknowledges them on request.

    ``await connect(...)`` (CONNACK checked), ``await subscribe(filter)`` (SUBACK checked);
    every PUBLISH calls ``on_message(topic, payload, ack)``. ``failed`` is set (and
    ``closed`` resolved) when the connection ends; a lost connection is not reopened here:
    the subscriber's owner reconnects, and the broker resends what was not acknowledged.
    """

    def __init__(self, on_message: OnMessage) -> None:
        self.on_message = on_message
        self.failed: Exception | None = None
        self.session_present = False
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._waiting: dict[int, asyncio.Future[bytes]] = {}  # CONNACK=0, SUBACK by id
        self._next_id = 0
        self._ping: asyncio.TimerHandle | None = None
        self._keepalive = 30
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- lifecycle --

    async def connect(
        self,
        host: str,
        port: int,
        client_id: str,
        *,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        keepalive: int = 30,
        clean_start: bool = False,
        session_expiry: int = 0,
        timeout: float = 10.0,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._keepalive = keepalive
        async with asyncio.timeout(timeout):
            await loop.create_connection(
                lambda: self, host, port, ssl=tls, server_hostname=host if tls else None
            )
            ack = self._expect(0)
            self._send(connect_packet(
                client_id, username=username, password=password, keepalive=keepalive,
                clean_start=clean_start, session_expiry=session_expiry,
            ))  # fmt: skip
            body = await ack
        if len(body) < 2:
            raise MqttRefused("connection", 0x81)
        if body[1] >= 0x80:
            self.close()
            raise MqttRefused("connection", body[1])
        self.session_present = bool(body[0] & 1)
        self._schedule_ping()

    async def subscribe(self, topic_filter: str, qos: int = 1, timeout: float = 10.0) -> None:
        self._next_id = self._next_id % 0xFFFF + 1
        ack = self._expect(self._next_id)
        self._send(subscribe_packet(self._next_id, topic_filter, qos))
        async with asyncio.timeout(timeout):
            body = await ack
        # packet id, properties (length + bytes), one reason code per filter
        n, pos = _read_varint(body, 2)
        codes = body[pos + n :]
        if not codes or codes[0] >= 0x80:
            raise MqttRefused(f"subscription to {topic_filter}", codes[0] if codes else 0x80)

    def close(self) -> None:
        """DISCONNECT (normal: the broker keeps the session and discards the will) and close."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(_DISCONNECT)
            self._transport.close()

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(exc or ConnectionError("connection closed by the broker"))

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos, end = 0, len(buf)
        while end - pos >= 2:
            # Remaining length: 1-4 bytes of 7 bits, low first.
            length, shift, i, complete = 0, 0, pos + 1, False
            while i < end:
                byte = buf[i]
                i += 1
                length |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    complete = True
                    break
                shift += 7
                if shift > 21:
                    self._protocol_error("malformed remaining length")
                    return
            if not complete or i + length > end:
                break
            first = buf[pos]
            body = bytes(buf[i : i + length])
            pos = i + length
            try:
                self._packet(first, body)
            except Exception as exc:  # noqa: BLE001 - a broken packet ends the connection
                self._protocol_error(f"bad packet 0x{first:02x}: {exc}")
                return
        del buf[:pos]

    # -- internals --

    def _packet(self, first: int, body: bytes) -> None:
        kind = first & 0xF0
        if kind == PUBLISH:
            qos = (first >> 1) & 3
            tlen = (body[0] << 8) | body[1]
            topic = body[2 : 2 + tlen].decode()
            pos = 2 + tlen
            packet_id = 0
            if qos:
                packet_id = (body[pos] << 8) | body[pos + 1]
                pos += 2
            plen, pos = _read_varint(body, pos)  # properties: not needed here
            payload = body[pos + plen :]
            self.on_message(topic, payload, self._acker(packet_id) if qos else _noop)
        elif kind == PINGRESP:
            pass
        elif kind == CONNACK:
            self._resolve(0, body)
        elif kind == SUBACK:
            self._resolve((body[0] << 8) | body[1], body)
        elif kind == DISCONNECT:
            reason = body[0] if body else 0
            self._end(ConnectionError(f"disconnected by the broker (reason 0x{reason:02x})"))
        # PUBACK/PUBREC...: this client publishes nothing; anything else is ignored.

    def _acker(self, packet_id: int) -> Callable[[], None]:
        packet = bytes((PUBACK, 2, packet_id >> 8, packet_id & 0xFF))

        def ack() -> None:
            # After a reconnect the id belongs to the new session: an ack from the old one
            # must not be sent on it (the broker resends the message instead).
            if transport is self._transport and self.failed is None:
                self._send(packet)

        transport = self._transport
        return ack

    def _expect(self, key: int) -> asyncio.Future[bytes]:
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        if self.failed is not None:
            fut.set_exception(self.failed)
        else:
            self._waiting[key] = fut
        return fut

    def _resolve(self, key: int, body: bytes) -> None:
        fut = self._waiting.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_result(body)

    def _send(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _schedule_ping(self) -> None:
        if self.failed is None and self._keepalive:
            if self._ping is not None:
                self._send(_PINGREQ)
            self._ping = asyncio.get_running_loop().call_later(
                self._keepalive / 2, self._schedule_ping
            )

    def _protocol_error(self, why: str) -> None:
        self._end(ConnectionError(f"MQTT protocol error: {why}"))
        if self._transport is not None:
            self._transport.abort()

    def _end(self, exc: Exception) -> None:
        if self.failed is None:
            self.failed = exc
        if self._ping is not None:
            self._ping.cancel()
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(exc)
        self._waiting.clear()
        if not self.closed.done():
            self.closed.set_result(None)
        if self._transport is not None and not self._transport.is_closing():
            with contextlib.suppress(Exception):
                self._transport.close()


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 21:
            raise ValueError("malformed variable byte integer")


def _noop() -> None:
    return None
