"""The CGM's MQTT 5 client: the subset its broker connections use, on an asyncio.Protocol.

Hand-written on purpose. Through aiomqtt/paho each message cost the collector more CPU than
everything else it does with it (paho reads a packet in several ``recv`` calls and builds a
``Properties`` object per PUBLISH and PUBACK by scanning every property name; aiomqtt adds a
future, a ``wait_for`` and a queue per message; benchmarks/README.md, "MQTT pushes" and
"Protocol CPU per session"). This client does what the driver needs, from MQTT 5.0 (OASIS,
2019): CONNECT (account, TLS, clean start or a resumed session with an expiry), SUBSCRIBE
(QoS, retain handling), PUBLISH out at QoS 1 with prebuilt properties (within the broker's
Receive Maximum), PUBLISH in at QoS 0/1 with PUBACK sent at once or when the caller says so
(after the entries are stored), PINGREQ keep-alive, DISCONNECT. No topic aliases, no QoS 2
(neither is used). Packets are cut from the stream in ``data_received``: a whole TCP read is
parsed in one callback. Proven by the tests against Mosquitto and against cgm's embedded
broker (tests/drivers/test_mqtt*.py, tests/collection/test_push_persistence.py).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import ssl
import struct
from collections.abc import Callable

CONNECT, CONNACK, PUBLISH, PUBACK = 0x10, 0x20, 0x30, 0x40
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 0x82, 0x90, 0xC0, 0xD0, 0xE0
_PINGREQ = bytes((PINGREQ, 0))
_DISCONNECT = bytes((DISCONNECT, 0))



class Incoming:
    """A received PUBLISH. ``ack()`` sends its PUBACK (QoS 1, manual acknowledgement; a
    no-op otherwise); ``props`` are its raw MQTT 5 properties."""

    __slots__ = ("ack", "payload", "props", "qos", "retain", "topic")

    def __init__(self, topic: str, payload: bytes, props: bytes, qos: int, retain: bool,
                 ack: Callable[[], None]) -> None:  # fmt: skip
        self.topic, self.payload, self.props = topic, payload, props
        self.qos, self.retain, self.ack = qos, retain, ack

    @property
    def correlation_data(self) -> bytes | None:
        return publish_property(self.props, 0x09)  # type: ignore[return-value]


OnMessage = Callable[[Incoming], None]

# PUBLISH property sizes (MQTT 5.0, 3.3.2.3): fixed, "s" length-prefixed (string or binary),
# "p" a string pair, "v" a variable byte integer.
_PUBLISH_PROPS: dict[int, int | str] = {0x01: 1, 0x02: 4, 0x23: 2, 0x08: "s", 0x09: "s",
                                        0x26: "p", 0x0B: "v", 0x03: "s"}  # fmt: skip


def publish_property(props: bytes, ident: int) -> bytes | int | None:
    """The first property ``ident`` in raw PUBLISH properties: bytes for a string or binary,
    an int for a number; None when absent."""
    i, end = 0, len(props)
    while i < end:
        pid = props[i]
        i += 1
        size = _PUBLISH_PROPS.get(pid)
        if size is None:
            raise ValueError(f"unknown PUBLISH property 0x{pid:02x}")
        if size == "s":
            n = (props[i] << 8) | props[i + 1]
            if pid == ident:
                return bytes(props[i + 2 : i + 2 + n])
            i += 2 + n
        elif size == "p":
            n = (props[i] << 8) | props[i + 1]
            m = (props[i + 2 + n] << 8) | props[i + 3 + n]
            i += 4 + n + m
        elif size == "v":
            value, i = _read_varint(props, i)
            if pid == ident:
                return value
        else:
            if pid == ident:
                return int.from_bytes(props[i : i + int(size)], "big")
            i += int(size)
    return None


def request_properties(response_topic: str, content_type: str, expiry: int) -> bytes:
    """PUBLISH properties of a request but its correlation data (see :func:`binary_property`)."""
    return (b"\x08" + _str(response_topic) + b"\x03" + _str(content_type)
            + b"\x02" + struct.pack("!I", expiry))  # fmt: skip


def correlation_property(data: bytes) -> bytes:
    return b"\x09" + _str(data)


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


def subscribe_packet(packet_id: int, topic_filter: str, qos: int, retain_handling: int = 0
                     ) -> bytes:  # fmt: skip
    options = qos | (retain_handling << 4)
    return _packet(SUBSCRIBE, struct.pack("!H", packet_id) + b"\x00" + _str(topic_filter)
                   + bytes((options,)))  # fmt: skip


# CONNACK property sizes (MQTT 5.0, 3.2.2.3), as _PUBLISH_PROPS.
# fmt: off
_CONNACK_PROPS: dict[int, int | str] = {
    0x11: 4, 0x21: 2, 0x24: 1, 0x25: 1, 0x27: 4, 0x22: 2, 0x28: 1, 0x29: 1, 0x2A: 1, 0x13: 2,
    0x12: "s", 0x1F: "s", 0x1A: "s", 0x1C: "s", 0x15: "s", 0x16: "s", 0x26: "p",
}
# fmt: on


def _connack_u16(connack: bytes, ident: int) -> int | None:
    """A two-byte CONNACK property (Receive Maximum 0x21, Server Keep Alive 0x13), or None."""
    sizes = _CONNACK_PROPS
    if len(connack) < 3:
        return None
    length, i = _read_varint(connack, 2)
    end = i + length
    while i < end:
        pid = connack[i]
        i += 1
        size = sizes.get(pid)
        if size is None:
            break
        if pid == ident:
            return (connack[i] << 8) | connack[i + 1]
        if size == "s":
            size = 2 + ((connack[i] << 8) | connack[i + 1])
        elif size == "p":
            first = 2 + ((connack[i] << 8) | connack[i + 1])
            size = first + 2 + ((connack[i + first] << 8) | connack[i + first + 1])
        i += int(size)
    return None


class LeanClient(asyncio.Protocol):
    """One MQTT 5 connection.

    ``await connect(...)`` (CONNACK checked), ``await subscribe(filter)`` (SUBACK checked),
    ``publish(topic, payload, props)`` (QoS 1, not awaited: the answer it asks for is what
    the caller waits for); every received PUBLISH calls ``on_message(Incoming)``, acknowledged
    at once unless ``manual_ack``. ``failed`` is set (and ``closed`` resolved) when the
    connection ends; a lost connection is not reopened here: its owner opens a new one, and
    a resumed session gets what it had not acknowledged.
    """

    def __init__(self, on_message: OnMessage, *, manual_ack: bool = False) -> None:
        self.on_message = on_message
        self.manual_ack = manual_ack
        self.failed: Exception | None = None
        self.session_present = False
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._waiting: dict[int, asyncio.Future[bytes]] = {}  # CONNACK=0, SUBACK by id
        self._next_id = 0
        self._ping: asyncio.TimerHandle | None = None
        self._last_rx = asyncio.get_running_loop().time()
        self._keepalive = 30
        self._out_id = 0
        self._unacked: set[int] = set()  # our QoS 1 publishes the broker has not acknowledged
        self._backlog: collections.deque[tuple[int, bytes]] = collections.deque()
        self.in_flight_max = 65535  # the broker's Receive Maximum
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
        self.in_flight_max = max(1, _connack_u16(body, 0x21) or 65535)
        server_keepalive = _connack_u16(body, 0x13)  # the broker's, when it overrides ours
        if server_keepalive is not None:
            self._keepalive = server_keepalive
        self._schedule_ping()

    async def subscribe(
        self, topic_filter: str, qos: int = 1, timeout: float = 10.0, *, retain_handling: int = 0
    ) -> None:
        """Subscribe; ``retain_handling`` 2: no retained messages at subscription."""
        self._next_id = self._next_id % 0xFFFF + 1
        ack = self._expect(self._next_id)
        self._send(subscribe_packet(self._next_id, topic_filter, qos, retain_handling))
        async with asyncio.timeout(timeout):
            body = await ack
        # packet id, properties (length + bytes), one reason code per filter
        n, pos = _read_varint(body, 2)
        codes = body[pos + n :]
        if not codes or codes[0] >= 0x80:
            raise MqttRefused(f"subscription to {topic_filter}", codes[0] if codes else 0x80)

    def publish(self, topic: str, payload: bytes, props: bytes = b"") -> None:
        """Send one QoS 1 PUBLISH with raw MQTT 5 ``props``; queued while the broker's
        Receive Maximum of ours are unacknowledged. Raises ConnectionError once lost."""
        if self.failed is not None:
            raise ConnectionError(f"connection lost: {self.failed}")
        self._out_id = self._out_id % 0xFFFF + 1
        while self._out_id in self._unacked:  # 65,535 in flight: never in practice
            self._out_id = self._out_id % 0xFFFF + 1
        pid = self._out_id
        t = topic.encode()
        props_len = _varint(len(props))
        body_len = 2 + len(t) + 2 + len(props_len) + len(props) + len(payload)
        packet = b"".join((
            b"\x32", _varint(body_len), struct.pack("!H", len(t)), t, struct.pack("!H", pid),
            props_len, props, payload,
        ))  # fmt: skip
        if len(self._unacked) >= self.in_flight_max:
            self._backlog.append((pid, packet))
            return
        self._unacked.add(pid)
        self._send(packet)

    def socket(self) -> socket.socket | None:
        if self._transport is None:
            return None
        return self._transport.get_extra_info("socket")  # type: ignore[no-any-return]

    def close(self) -> None:
        """DISCONNECT (normal: the broker keeps the session and discards the will) and close."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(_DISCONNECT)
            self._transport.close()

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        # Nagle off: each small PUBLISH behind another one would wait for the peer's delayed
        # ACK (measured 90 ms per request/answer on loopback; benchmarks/README.md).
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(exc or ConnectionError("connection closed by the broker"))

    def data_received(self, data: bytes) -> None:
        self._last_rx = asyncio.get_running_loop().time()
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
            plen, pos = _read_varint(body, pos)
            props, payload = body[pos : pos + plen], body[pos + plen :]
            ack = _noop
            if qos:
                if self.manual_ack:
                    ack = self._acker(packet_id)
                else:
                    self._send(bytes((PUBACK, 2, packet_id >> 8, packet_id & 0xFF)))
            self.on_message(Incoming(topic, payload, props, qos, bool(first & 1), ack))
        elif kind == PUBACK:
            self._unacked.discard((body[0] << 8) | body[1])
            while self._backlog and len(self._unacked) < self.in_flight_max:
                pid, packet = self._backlog.popleft()
                self._unacked.add(pid)
                self._send(packet)
        elif kind == PINGRESP:
            pass
        elif kind == CONNACK:
            self._resolve(0, body)
        elif kind == SUBACK:
            self._resolve((body[0] << 8) | body[1], body)
        elif kind == DISCONNECT:
            reason = body[0] if body else 0
            self._end(ConnectionError(f"disconnected by the broker (reason 0x{reason:02x})"))
        # Anything else (QoS 2 flows, AUTH) is never asked for; ignored.

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
        """PINGREQ every half keep-alive; a broker silent for 1.5 keep-alives (a half-open
        link: no FIN ever comes) ends the connection, as MQTT 5.0 3.1.2.10 lets a client."""
        if self.failed is None and self._keepalive:
            loop = asyncio.get_running_loop()
            if self._ping is not None:
                if loop.time() - self._last_rx > 1.5 * self._keepalive:
                    self._protocol_error("no packet from the broker within 1.5 keep-alives")
                    return
                self._send(_PINGREQ)
            self._ping = loop.call_later(self._keepalive / 2, self._schedule_ping)

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
        self._backlog.clear()
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
