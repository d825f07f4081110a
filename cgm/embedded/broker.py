"""A small in-process MQTT 5 broker for the CGM's embedded default and for tests.

Why our own: amqtt 0.12 speaks only MQTT 3.1.1 (no response topic / correlation data), and
mqttools' broker accepts only QoS 0 (a QoS 1 PUBLISH gets the client disconnected), refuses
any username/password and matches wildcards with an unescaped regex (``a/#`` matches
``ab/c``). What this one does, on one asyncio loop and plain TCP:

* MQTT 5.0 only (protocol level 5); a 3.1.1 client gets CONNACK "unacceptable protocol".
* QoS 0 and 1 in both directions (PUBACK), Maximum QoS 1 announced in CONNACK; delivered QoS
  is min(publish QoS, granted QoS). QoS 1 messages are not retransmitted on the same
  connection (MQTT 5 only retransmits on reconnect) but are queued for offline sessions.
* PUBLISH properties (response topic, correlation data, user properties, content type,
  message expiry, ...) forwarded unchanged; topic aliases are not offered.
* ``+`` / ``#`` wildcards by topic level, ``$``-topics excluded from leading wildcards;
  retained messages (with their properties); no-local, retain-as-published, retain-handling.
* Last will (with retain and will delay) on abnormal disconnect or DISCONNECT 0x04.
* Session expiry: a session with a non-zero expiry keeps its subscriptions and queues QoS 1
  messages (bounded) while offline, and sends its unacknowledged QoS 1 deliveries again when
  it resumes; session takeover disconnects the older connection. Sessions live in memory:
  they do not survive a restart of the broker (nor, embedded, of cgm).
* Keep-alive enforced at 1.5 x; optional username/password table (anonymous otherwise).
* Packet size is capped before anything is buffered: a CONNECT (before authentication) at
  ``MAX_CONNECT_PACKET``, every later packet at ``max_packet_size`` (announced in CONNACK),
  and a connection must send its CONNECT within ``connect_timeout``. A peer announcing a
  larger packet is disconnected (0x95) from its fixed header alone.

* TLS when given an ``ssl.SSLContext`` (server side; client certificates if it asks).

Not offered: QoS 2, shared subscriptions, subscription identifiers, enhanced AUTH,
persistence across restarts, ACLs. Production deployments use Mosquitto (deploy/).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import logging
import ssl
import struct
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# Control packet types.
CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
PUBREC, PUBREL, PUBCOMP, SUBSCRIBE, SUBACK = 5, 6, 7, 8, 9
UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = 10, 11, 12, 13, 14, 15

# Property identifiers this broker reads or writes.
P_SESSION_EXPIRY = 0x11
P_ASSIGNED_CLIENT_ID = 0x12
P_WILL_DELAY = 0x18
P_MAX_PACKET_SIZE = 0x27
P_TOPIC_ALIAS = 0x23
P_SUBSCRIPTION_ID = 0x0B
P_REASON_STRING = 0x1F
P_RETAIN_AVAILABLE = 0x25
P_MAXIMUM_QOS = 0x24
P_WILDCARD_AVAILABLE = 0x28
P_SUB_ID_AVAILABLE = 0x29
P_SHARED_AVAILABLE = 0x2A
P_TOPIC_ALIAS_MAX = 0x22
P_SERVER_KEEP_ALIVE = 0x13

_BYTE = {0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A}
_U16 = {0x13, 0x21, 0x22, 0x23}
_U32 = {0x02, 0x11, 0x18, 0x27}
_VARINT = {0x0B}
_STRING = {0x03, 0x08, 0x12, 0x15, 0x1A, 0x1C, 0x1F}
_BINARY = {0x09, 0x16}
_PAIR = {0x26}

MAX_QUEUED = 10_000  # QoS 1 messages kept per offline session
# A CONNECT holds a client id, a will and credentials: 64 KiB is plenty, and no more than
# that is ever read from a peer that has not authenticated.
MAX_CONNECT_PACKET = 64 * 1024
# After login: a day of hourly cgm-meter/1 entries is ~10 KB; 1 MiB leaves room for 30 days.
DEFAULT_MAX_PACKET = 1024 * 1024


class MalformedPacket(Exception):
    """The peer sent bytes that are not MQTT 5; the connection is closed."""


class _TooLarge(Exception):
    """A packet announced longer than this connection may send."""

    def __init__(self, length: int) -> None:
        super().__init__(f"packet of {length} bytes exceeds the limit")


class _Refused(Exception):
    """Close the connection with this DISCONNECT reason code."""

    def __init__(self, reason: int) -> None:
        super().__init__(f"reason 0x{reason:02x}")
        self.reason = reason


# --- encoding ------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def _packet(ptype: int, flags: int, body: bytes) -> bytes:
    return bytes([(ptype << 4) | flags]) + _varint(len(body)) + body


def _props(items: list[tuple[int, bytes]]) -> bytes:
    raw = b"".join(bytes([pid]) + value for pid, value in items)
    return _varint(len(raw)) + raw


class _Reader:
    """Cursor over one packet body."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise MalformedPacket("packet shorter than its fields")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("!H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack("!I", self.take(4))[0]

    def varint(self) -> int:
        value, shift = 0, 0
        for _ in range(4):
            byte = self.u8()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
        raise MalformedPacket("variable byte integer too long")

    def binary(self) -> bytes:
        return self.take(self.u16())

    def string(self) -> str:
        try:
            return self.binary().decode()
        except UnicodeDecodeError as exc:
            raise MalformedPacket("invalid UTF-8") from exc

    def rest(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out

    def properties(self) -> list[tuple[int, bytes, object]]:
        """(id, raw value bytes, decoded value) triples, in order."""
        end = self.varint() + self.pos
        out: list[tuple[int, bytes, object]] = []
        while self.pos < end:
            pid = self.u8()
            start = self.pos
            value: object
            if pid in _BYTE:
                value = self.u8()
            elif pid in _U16:
                value = self.u16()
            elif pid in _U32:
                value = self.u32()
            elif pid in _VARINT:
                value = self.varint()
            elif pid in _STRING:
                value = self.string()
            elif pid in _BINARY:
                value = self.binary()
            elif pid in _PAIR:
                value = (self.string(), self.string())
            else:
                raise MalformedPacket(f"unknown property 0x{pid:02x}")
            out.append((pid, self.data[start : self.pos], value))
        if self.pos != end:
            raise MalformedPacket("property length mismatch")
        return out


# --- topics --------------------------------------------------------------------------------


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic-filter matching by level (``+`` one level, ``#`` the rest, ``$`` private)."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_levels, t_levels = topic_filter.split("/"), topic.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            return True
        if i >= len(t_levels) or (f != "+" and f != t_levels[i]):
            return False
    return len(f_levels) == len(t_levels)


def _valid_filter(topic_filter: str) -> bool:
    if not topic_filter or "\0" in topic_filter:
        return False
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


# --- state ---------------------------------------------------------------------------------


@dataclass
class _Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: list[tuple[int, bytes]]  # forwarded verbatim


@dataclass
class _Subscription:
    qos: int
    no_local: bool
    retain_as_published: bool


@dataclass
class _Session:
    client_id: str
    expiry: int = 0
    subscriptions: dict[str, _Subscription] = field(default_factory=dict)
    queue: deque[tuple[_Message, int]] = field(default_factory=lambda: deque(maxlen=MAX_QUEUED))
    # QoS 1 deliveries not yet acknowledged, by packet id (sessions with an expiry only):
    # sent again when the session resumes, so a subscriber that acknowledges only what it
    # has stored loses nothing to a crash.
    unacked: dict[int, _Message] = field(default_factory=dict)
    connection: _Connection | None = None
    expiry_handle: asyncio.TimerHandle | None = None


class _Connection:
    """One client TCP connection."""

    def __init__(
        self, broker: Broker, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.broker = broker
        self.reader = reader
        self.writer = writer
        self.session: _Session | None = None
        self.will: _Message | None = None
        self.will_delay = 0
        self.keep_alive = 0
        self.max_packet = 268_435_455  # what the client accepts from us (its CONNECT property)
        self.max_inbound = MAX_CONNECT_PACKET  # what we accept: raised after authentication
        self.packet_ids = itertools.cycle(range(1, 65536))
        self.send_will = True

    # -- io --
    async def read_packet(self, timeout: float | None = None) -> tuple[int, int, _Reader]:
        if timeout is None and self.keep_alive:
            timeout = self.keep_alive * 1.5
        async with asyncio.timeout(timeout):
            first = (await self.reader.readexactly(1))[0]
            length, shift = 0, 0
            for _ in range(4):
                byte = (await self.reader.readexactly(1))[0]
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            else:
                raise MalformedPacket("remaining length too long")
            if length > self.max_inbound:
                # Refused from the fixed header: the body is never read, let alone buffered.
                raise _TooLarge(length)
            body = await self.reader.readexactly(length)
        return first >> 4, first & 0x0F, _Reader(body)

    def peer(self) -> str:
        info = self.writer.get_extra_info("peername")
        return f"{info[0]}:{info[1]}" if isinstance(info, tuple) else "a client"

    def send(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    def deliver(self, msg: _Message, qos: int, retain: bool) -> None:
        """Send a PUBLISH to this client at ``qos`` (already min(publish, granted))."""
        body = _str(msg.topic)
        if qos:
            packet_id = next(self.packet_ids)
            body += struct.pack("!H", packet_id)
            session = self.session
            if session is not None and session.expiry:
                if len(session.unacked) >= MAX_QUEUED:
                    session.unacked.pop(next(iter(session.unacked)))
                session.unacked[packet_id] = msg
        body += _props(msg.properties) + msg.payload
        data = _packet(PUBLISH, (qos << 1) | int(retain), body)
        if len(data) <= self.max_packet:
            self.send(data)

    def disconnect(self, reason: int) -> None:
        self.send(_packet(DISCONNECT, 0, bytes([reason, 0])))
        self.writer.close()

    # -- lifecycle --
    async def serve(self) -> None:
        try:
            try:
                ptype, _, body = await self.read_packet(self.broker.connect_timeout)
            except _TooLarge:
                # Before CONNACK the refusal is a CONNACK (MQTT 5, 3.2.2.2).
                self.send(_packet(CONNACK, 0, bytes([0, 0x95]) + _props([])))
                log.warning("refused an oversized CONNECT from %s", self.peer())
                return
            except TimeoutError:
                return  # no CONNECT in time: just close
            if ptype != CONNECT or not self.on_connect(body):
                return
            while True:
                ptype, flags, body = await self.read_packet()
                if ptype == PUBLISH:
                    self.on_publish(flags, body)
                elif ptype == SUBSCRIBE:
                    self.on_subscribe(body)
                elif ptype == UNSUBSCRIBE:
                    self.on_unsubscribe(body)
                elif ptype == PINGREQ:
                    self.send(_packet(PINGRESP, 0, b""))
                elif ptype == DISCONNECT:
                    self.on_disconnect(body)
                    return
                elif ptype == PUBACK:
                    if self.session is not None and self.session.unacked:
                        self.session.unacked.pop(body.u16(), None)
                elif ptype in (PUBCOMP, PUBREC):
                    continue
                else:
                    raise _Refused(0x82)  # protocol error
        except _TooLarge as exc:
            log.warning("disconnected %s: %s", self.peer(), exc)
            self.disconnect(0x95)  # packet too large
        except _Refused as exc:
            self.disconnect(exc.reason)
        except MalformedPacket as exc:
            log.debug("malformed packet: %s", exc)
            self.disconnect(0x81)
        except TimeoutError:
            self.disconnect(0x8D)  # keep alive timeout
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.broker._connection_closed(self)
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()

    def on_connect(self, r: _Reader) -> bool:
        if r.string() != "MQTT":
            raise MalformedPacket("not MQTT")
        level = r.u8()
        if level != 5:
            # 3.1.1 CONNACK: "unacceptable protocol version".
            self.send(_packet(CONNACK, 0, bytes([0, 0x01 if level < 5 else 0x84])))
            return False
        flags = r.u8()
        self.keep_alive = r.u16()
        props = {pid: value for pid, _, value in r.properties()}
        client_id = r.string()
        assigned = None
        if not client_id:
            client_id = assigned = f"cgm-auto-{next(self.broker._ids)}"
        if flags & 0x04:  # will
            will_props = r.properties()
            self.will_delay = int(next((v for p, _, v in will_props if p == P_WILL_DELAY), 0))
            forwarded = [(p, raw) for p, raw, _ in will_props if p != P_WILL_DELAY]
            topic = r.string()
            payload = r.binary()
            qos = (flags >> 3) & 3
            self.will = _Message(topic, payload, min(qos, 1), bool(flags & 0x20), forwarded)
        username = r.string() if flags & 0x80 else None
        password = r.binary() if flags & 0x40 else None
        if not self.broker._authenticate(username, password):
            self.send(_packet(CONNACK, 0, bytes([0, 0x86]) + _props([])))
            return False
        if P_MAX_PACKET_SIZE in props:
            self.max_packet = int(props[P_MAX_PACKET_SIZE])  # type: ignore[call-overload]
        self.max_inbound = self.broker.max_packet_size
        expiry = int(props.get(P_SESSION_EXPIRY, 0))  # type: ignore[call-overload]
        session, present = self.broker._attach(self, client_id, bool(flags & 0x02), expiry)
        self.session = session
        out = [
            (P_MAXIMUM_QOS, bytes([1])),
            (P_RETAIN_AVAILABLE, bytes([1])),
            (P_WILDCARD_AVAILABLE, bytes([1])),
            (P_SUB_ID_AVAILABLE, bytes([0])),
            (P_SHARED_AVAILABLE, bytes([0])),
            (P_TOPIC_ALIAS_MAX, struct.pack("!H", 0)),
            (P_MAX_PACKET_SIZE, struct.pack("!I", self.broker.max_packet_size)),
        ]
        if assigned:
            out.append((P_ASSIGNED_CLIENT_ID, _str(assigned)))
        self.send(_packet(CONNACK, 0, bytes([int(present), 0]) + _props(out)))
        if not present:
            session.unacked.clear()
        unacked, session.unacked = list(session.unacked.values()), {}
        for msg in unacked:  # sent again, under this connection's packet ids
            self.deliver(msg, 1, False)
        while session.queue:
            msg, qos = session.queue.popleft()
            self.deliver(msg, qos, False)
        return True

    def on_publish(self, flags: int, r: _Reader) -> None:
        qos, retain = (flags >> 1) & 3, bool(flags & 1)
        topic = r.string()
        packet_id = r.u16() if qos else None
        props = r.properties()
        payload = r.rest()
        if qos > 1:
            raise _Refused(0x9B)  # QoS not supported
        if not topic or "+" in topic or "#" in topic:
            raise MalformedPacket("invalid topic name in PUBLISH")
        forwarded = [(p, raw) for p, raw, _ in props if p not in (P_TOPIC_ALIAS, P_SUBSCRIPTION_ID)]
        msg = _Message(topic, payload, qos, retain, forwarded)
        self.broker._route(msg, sender=self)
        if qos == 1 and packet_id is not None:
            self.send(_packet(PUBACK, 0, struct.pack("!H", packet_id)))

    def on_subscribe(self, r: _Reader) -> None:
        assert self.session is not None
        packet_id = r.u16()
        r.properties()
        reasons = bytearray()
        retained: list[tuple[_Message, int, bool]] = []
        while r.pos < len(r.data):
            topic_filter = r.string()
            options = r.u8()
            if not _valid_filter(topic_filter):
                reasons.append(0x8F)  # topic filter invalid
                continue
            if topic_filter.startswith("$share/"):
                reasons.append(0x9E)  # shared subscriptions not supported
                continue
            qos = min(options & 3, 1)
            sub = _Subscription(qos, bool(options & 0x04), bool(options & 0x08))
            existed = topic_filter in self.session.subscriptions
            self.session.subscriptions[topic_filter] = sub
            handling = (options >> 4) & 3
            if handling == 0 or (handling == 1 and not existed):
                for msg in self.broker._retained.values():
                    if topic_matches(topic_filter, msg.topic):
                        retained.append((msg, min(msg.qos, qos), True))
            reasons.append(qos)
        self.send(_packet(SUBACK, 0, struct.pack("!H", packet_id) + _props([]) + bytes(reasons)))
        for msg, qos, retain in retained:
            self.deliver(msg, qos, retain)

    def on_unsubscribe(self, r: _Reader) -> None:
        assert self.session is not None
        packet_id = r.u16()
        r.properties()
        reasons = bytearray()
        while r.pos < len(r.data):
            existed = self.session.subscriptions.pop(r.string(), None) is not None
            reasons.append(0x00 if existed else 0x11)
        self.send(_packet(UNSUBACK, 0, struct.pack("!H", packet_id) + _props([]) + bytes(reasons)))

    def on_disconnect(self, r: _Reader) -> None:
        reason = r.u8() if r.pos < len(r.data) else 0
        if r.pos < len(r.data):
            props = {pid: value for pid, _, value in r.properties()}
            if P_SESSION_EXPIRY in props and self.session is not None:
                self.session.expiry = int(props[P_SESSION_EXPIRY])  # type: ignore[call-overload]
        self.send_will = reason == 0x04  # "disconnect with will message"


class Broker:
    """The broker. ``await start()`` inside the running loop, ``await stop()`` to end.

    ``users`` maps username to password; when given, clients must present one of them.
    ``max_packet_size`` caps packets after login; ``connect_timeout`` is how long a new
    connection may take to send its CONNECT.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        users: Mapping[str, str] | None = None,
        *,
        max_packet_size: int = DEFAULT_MAX_PACKET,
        connect_timeout: float = 10.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if max_packet_size < MAX_CONNECT_PACKET:
            raise ValueError(f"max_packet_size must be at least {MAX_CONNECT_PACKET}")
        self.host = host
        self.port = port
        self.users = dict(users) if users is not None else None
        self.max_packet_size = max_packet_size
        self.connect_timeout = connect_timeout
        self.tls = tls
        self._server: asyncio.Server | None = None
        self._sessions: dict[str, _Session] = {}
        self._retained: dict[str, _Message] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    async def start(self) -> tuple[str, int]:
        """Listen (port 0 picks a free one) and return the bound (host, port)."""
        self._server = await asyncio.start_server(self._accept, self.host, self.port, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("embedded MQTT 5 broker on %s:%d", self.host, self.port)
        return self.address

    async def stop(self) -> None:
        """Stop listening and close every client connection (no wills are sent)."""
        if self._server is None:
            return
        self._server.close()
        for session in self._sessions.values():
            if session.connection is not None:
                session.connection.send_will = False
                session.connection.disconnect(0x8B)  # server shutting down
            if session.expiry_handle is not None:
                session.expiry_handle.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=1.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> Broker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- internals --
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await _Connection(self, reader, writer).serve()
        except asyncio.CancelledError:
            pass  # stop(): asyncio's stream callback would log a cancelled handler task
        finally:
            self._tasks.discard(task)

    def _authenticate(self, username: str | None, password: bytes | None) -> bool:
        if self.users is None:
            return True
        if username is None or password is None or username not in self.users:
            return False
        return hmac.compare_digest(self.users[username].encode(), password)

    def _attach(
        self, conn: _Connection, client_id: str, clean_start: bool, expiry: int
    ) -> tuple[_Session, bool]:
        session = self._sessions.get(client_id)
        if session is not None and session.connection is not None:
            old = session.connection
            session.connection = None
            old.disconnect(0x8E)  # session taken over
        if session is not None and session.expiry_handle is not None:
            session.expiry_handle.cancel()
            session.expiry_handle = None
        present = session is not None and not clean_start
        if not present:
            session = _Session(client_id)
            self._sessions[client_id] = session
        assert session is not None
        session.expiry = expiry
        session.connection = conn
        return session, present

    def _connection_closed(self, conn: _Connection) -> None:
        session = conn.session
        if conn.will is not None and conn.send_will:
            will = conn.will
            if conn.will_delay:
                asyncio.get_running_loop().call_later(conn.will_delay, self._publish_will, will)
            else:
                self._publish_will(will)
        if session is None or session.connection is not conn:
            return  # never connected, or taken over by a newer connection
        session.connection = None
        if session.expiry == 0:
            self._sessions.pop(session.client_id, None)
        elif session.expiry < 0xFFFFFFFF:
            session.expiry_handle = asyncio.get_running_loop().call_later(
                session.expiry, self._expire, session
            )

    def _publish_will(self, will: _Message) -> None:
        if self._server is not None:
            self._route(will, sender=None)

    def _expire(self, session: _Session) -> None:
        if self._sessions.get(session.client_id) is session and session.connection is None:
            del self._sessions[session.client_id]

    def _route(self, msg: _Message, sender: _Connection | None) -> None:
        if msg.retain:
            if msg.payload:
                self._retained[msg.topic] = msg
            else:
                self._retained.pop(msg.topic, None)
        for session in list(self._sessions.values()):
            granted: _Subscription | None = None
            for topic_filter, sub in session.subscriptions.items():
                if sub.no_local and sender is not None and session.connection is sender:
                    continue
                if topic_matches(topic_filter, msg.topic) and (
                    granted is None or sub.qos > granted.qos
                ):
                    granted = sub
            if granted is None:
                continue
            qos = min(msg.qos, granted.qos)
            retain = msg.retain and granted.retain_as_published
            if session.connection is not None:
                session.connection.deliver(msg, qos, retain)
            elif qos:
                session.queue.append((msg, qos))


async def start(host: str = "127.0.0.1", port: int = 0, **kwargs: object) -> Broker:
    """Start a broker in the running loop; ``broker.port`` is the bound port."""
    broker = Broker(host, port, **kwargs)  # type: ignore[arg-type]
    await broker.start()
    return broker
