"""The MQTT driver: MQTT 5 request/response for commands, pushed entries on the same link.

One broker connection per (broker, account, TLS settings) is shared by every session of the
process (see :class:`BrokerConnection`): a session is a private state (serial, secret,
pending requests) on that connection, not a connection of its own. Each command is a
PUBLISH to the meter's command topic with Response Topic ``…/clients/{id}/res/{serial}``
and Correlation Data; the answer is matched by correlation data.

Commands carry an HMAC of the request made with the art. 17 level's secret. Answers are
accepted only when authenticated: signed with the same secret over the request's nonce
(``answer_auth: signature``, the default), or arriving on the meter's own response topic
where the broker's ACL lets only that meter's account publish (``answer_auth: broker_acl``).
An unauthenticated answer is logged and dropped; the request keeps waiting for the real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import secrets
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Self

from drivers.base import (
    AccessDenied,
    AuthenticationFailed,
    ClockReading,
    ConnectionFailed,
    Credentials,
    Driver,
    DriverError,
    Endpoint,
    MeterIdentity,
    MeterSession,
    MeterTimeout,
    NotSupported,
    ProfileConfig,
    ProfileEntry,
    ProtocolError,
    RegisterValue,
    SessionEvent,
    utcnow,
)
from drivers.cumulative import CumulativeRow, profile_entries
from drivers.mqtt import protocol as p
from drivers.mqtt.lean import (
    Incoming,
    LeanClient,
    MqttRefused,
    correlation_property,
    request_properties,
)

log = logging.getLogger(__name__)

_BAD_BROKER_CREDENTIALS = {0x86, 0x87, 4, 5}  # MQTT 5 bad user/password, not authorised; 3.1.1
IDLE_CLOSE = 30.0  # seconds a shared connection stays open with no session or subscriber
MAX_CONNECTIONS = 16  # shared connections per broker and login (see _Pool)


@dataclass(frozen=True)
class BrokerLogin:
    """How the CGM logs in to a broker: an account and/or a client certificate, and TLS.

    ``password`` and ``client_key`` (PEM text) are secrets: they never appear in a repr.
    ``tls`` is implied by a CA file or a client certificate.
    """

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_file: str | None = None
    client_cert: str | None = None  # PEM certificate file (public)
    client_key: str | None = field(default=None, repr=False)  # PEM private key text

    @property
    def uses_tls(self) -> bool:
        return self.tls or bool(self.ca_file or self.client_cert)

    def key(self) -> tuple[Any, ...]:
        """Identity of a connection: sessions with equal keys share one."""
        secret = hashlib.sha256(f"{self.password}\0{self.client_key}".encode()).hexdigest()
        return (self.username, secret, self.uses_tls, self.ca_file, self.client_cert)

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.uses_tls:
            return None
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.client_cert:
            if not self.client_key:
                raise ValueError("a client certificate needs its private key")
            # ssl loads keys only from files: a private temporary file, removed at once.
            fd, path = tempfile.mkstemp(prefix="cgm-mqtt-", suffix=".key")
            try:
                with os.fdopen(fd, "w") as fh:
                    fh.write(self.client_key)
                ctx.load_cert_chain(self.client_cert, path)
            finally:
                os.unlink(path)
        return ctx


def _broker_error(exc: Exception, endpoint: Endpoint, what: str) -> DriverError:
    rc = getattr(exc, "rc", None)
    code = getattr(rc, "value", rc)
    if code in _BAD_BROKER_CREDENTIALS:
        return AuthenticationFailed(f"broker {endpoint} refused the credentials", endpoint=endpoint)
    if isinstance(exc, ssl.SSLError) or isinstance(exc.__cause__, ssl.SSLError):
        return ConnectionFailed(f"TLS with broker {endpoint} failed: {exc}", endpoint=endpoint)
    return ConnectionFailed(f"{what} broker {endpoint}: {exc}", endpoint=endpoint)


# --- the shared connection ---------------------------------------------------------------


@dataclass
class _Pending:
    """One request waiting for its authenticated answer."""

    future: asyncio.Future[tuple[dict[str, Any], datetime]]
    serial: str
    command: str
    level: int
    nonce: str
    secret: str
    auth_mode: str
    grace: float = 5.0  # how long an unverifiable refusal waits for an authenticated answer
    fallback_armed: bool = False
    events: list[SessionEvent] | None = None  # the session's, to count refused answers


Listener = Callable[[str, str, Incoming], None]  # (prefix, serial, message)


class BrokerConnection:
    """One MQTT 5 connection shared by all sessions and profile subscribers on it, on the
    lean client (``drivers/mqtt/lean.py``)."""

    def __init__(
        self,
        endpoint: Endpoint,
        login: BrokerLogin,
        *,
        timeout: float,
    ) -> None:
        self.endpoint = endpoint
        self.login = login
        self.client_id = f"cgm-{secrets.token_hex(6)}"
        self._timeout = timeout
        # Acknowledged on arrival: a durable push subscription (stored before acknowledged)
        # has a connection of its own (ProfileSubscription._open_durable).
        self._client = LeanClient(self._on_message, manual_ack=False)
        self._pending: dict[bytes, _Pending] = {}
        self._templates: dict[tuple[str, str, float], bytes] = {}
        self._prefixes: dict[str, asyncio.Future[None]] = {}
        self._listeners: dict[str, list[Listener]] = {}  # prefix -> profile listeners
        self.failed: DriverError | None = None
        self.users = 0
        self.rejected = 0  # unauthenticated answers dropped (each one logged)
        self._idle: asyncio.TimerHandle | None = None

    async def open(self) -> None:
        try:
            await self._client.connect(
                self.endpoint.host, self.endpoint.port, self.client_id,
                username=self.login.username, password=self.login.password,
                tls=self.login.ssl_context(), keepalive=30, clean_start=True,
                timeout=self._timeout,
            )  # fmt: skip
        except (MqttRefused, OSError, TimeoutError) as exc:
            self._client.close()
            raise _broker_error(exc, self.endpoint, "cannot reach") from exc
        self._client.closed.add_done_callback(self._lost)

    @property
    def capacity(self) -> int:
        """Sessions this connection takes before the pool opens another: the broker's
        Receive Maximum (each session has one request out at a time)."""
        return self._client.in_flight_max

    def _lost(self, _: object) -> None:
        if self.failed is None:
            self._fail(ConnectionFailed(f"lost broker {self.endpoint}: {self._client.failed}"))

    async def close(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._fail(ConnectionFailed("connection closed", endpoint=self.endpoint))
        self._client.close()

    async def use_prefix(self, prefix: str) -> None:
        """Subscribe (once per prefix) to this client's answers and the meters' statuses."""
        fut = self._prefixes.get(prefix)
        if fut is None:
            fut = self._prefixes[prefix] = asyncio.ensure_future(self._subscribe(prefix))
        try:
            await asyncio.shield(fut)
        except BaseException:
            if fut.done():
                self._prefixes.pop(prefix, None)
            raise

    async def _subscribe(self, prefix: str) -> None:
        try:
            await self._client.subscribe(p.responses_filter(prefix, self.client_id), 1)
            # Live status changes only: a retained "online" from the past says nothing now.
            await self._client.subscribe(p.all_status_filter(prefix), 1, retain_handling=2)
        except (MqttRefused, ConnectionError, OSError) as exc:
            raise _broker_error(exc, self.endpoint, "cannot subscribe on") from exc

    async def add_profile_listener(self, prefix: str, listener: Listener) -> None:
        first = prefix not in self._listeners
        self._listeners.setdefault(prefix, []).append(listener)
        if first:
            try:
                await self._client.subscribe(p.all_profiles_filter(prefix), 1)
            except (MqttRefused, ConnectionError, OSError) as exc:
                self._listeners.pop(prefix, None)
                raise _broker_error(exc, self.endpoint, "cannot subscribe on") from exc

    def remove_profile_listener(self, prefix: str, listener: Listener) -> None:
        listeners = self._listeners.get(prefix, [])
        with contextlib.suppress(ValueError):
            listeners.remove(listener)

    def _request_properties(self, prefix: str, serial: str, timeout: float) -> bytes:
        """A meter's request properties but the correlation data, encoded once."""
        key = (prefix, serial, timeout)
        props = self._templates.get(key)
        if props is None:
            # A request nobody picked up in time is worthless; let the broker drop it.
            props = request_properties(
                p.response_topic(prefix, self.client_id, serial), "application/json",
                max(1, math.ceil(timeout)),
            )  # fmt: skip
            if len(self._templates) >= 100_000:
                self._templates.clear()
            self._templates[key] = props
        return props

    async def request(
        self, pending: _Pending, prefix: str, topic: str, body: bytes, timeout: float
    ) -> tuple[dict[str, Any], datetime]:
        if self.failed is not None:
            raise type(self.failed)(str(self.failed), endpoint=self.endpoint)
        corr = secrets.token_bytes(16)
        self._pending[corr] = pending
        props = self._request_properties(prefix, pending.serial, timeout)
        try:
            try:
                self._client.publish(topic, body, props + correlation_property(corr))
            except (ConnectionError, OSError) as exc:
                raise ConnectionFailed(
                    f"{pending.command}: publish failed: {exc}", endpoint=self.endpoint
                ) from exc
            pending.grace = timeout / 2
            return await pending.future
        finally:
            self._pending.pop(corr, None)

    # -- incoming --

    def _on_message(self, msg: Incoming) -> None:
        try:
            self._dispatch(msg)
        except Exception:  # noqa: BLE001 - one bad message must not stop the link
            log.exception("MQTT message on %s could not be handled", msg.topic)

    def _dispatch(self, msg: Incoming) -> None:
        topic = msg.topic
        prefix, _, rest = topic.partition(f"/{p.TOPIC_VERSION}/")
        if rest.startswith("clients/"):
            serial = p.response_topic_serial(prefix, self.client_id, topic)
            if serial is not None:
                self._answer(serial, msg)
        elif rest.endswith("/profile"):
            serial = p.meter_topic_serial(prefix, topic, "profile")
            listeners = list(self._listeners.get(prefix, ()))
            if serial is not None and listeners:
                for listener in listeners:
                    listener(prefix, serial, msg)
                return
        elif rest.endswith("/status") and not msg.retain:
            serial = p.meter_topic_serial(prefix, topic, "status")
            if serial is not None:
                self._status(serial, msg)

    def _answer(self, topic_serial: str, msg: Incoming) -> None:
        try:
            corr = msg.correlation_data
        except (ValueError, IndexError):
            corr = None
        pending = self._pending.get(corr) if corr else None
        if pending is None or pending.future.done():
            return
        if topic_serial != pending.serial:
            self._reject(pending, f"answer for {pending.serial} on {topic_serial}'s topic")
            return
        try:
            answer = p.loads(bytes(msg.payload))
        except p.PayloadError as exc:
            err = ProtocolError(f"{pending.command}: {exc}", endpoint=self.endpoint)
            if pending.auth_mode == p.AUTH_BROKER_ACL:
                pending.future.set_exception(err)
            else:
                self._reject(pending, f"unauthenticated, not JSON: {exc}", err)
            return
        if pending.auth_mode == p.AUTH_SIGNATURE and not p.verify_answer(
            answer, pending.secret, pending.level, pending.nonce
        ):
            fallback = None
            error = answer.get("error")
            if isinstance(error, dict) and error.get("code") == "auth":
                # A meter refusing our secret signs with its own, which we cannot verify.
                fallback = AuthenticationFailed(
                    f"{pending.command} on {pending.serial}: the meter refused the "
                    "credentials (its answer could not be verified with them)",
                    endpoint=self.endpoint,
                )
            self._reject(pending, "signature missing or does not verify", fallback)
            return
        pending.future.set_result((answer, utcnow()))

    def _reject(self, pending: _Pending, why: str, fallback: DriverError | None = None) -> None:
        """Drop an unauthenticated answer. With a ``fallback`` (a refusal or a corrupt answer
        that may be the meter's own), fail the request with it unless an authenticated
        answer comes within the grace period: a forged one must not beat the real meter."""
        if fallback is not None and not pending.fallback_armed:
            pending.fallback_armed = True

            def expire() -> None:
                if not pending.future.done():
                    pending.future.set_exception(fallback)

            asyncio.get_running_loop().call_later(pending.grace, expire)
        self.rejected += 1
        if pending.events is not None:
            pending.events.append(SessionEvent("unauthenticated_answer", why))
        log.warning(
            "refused an unauthenticated answer to %s for meter %s: %s",
            pending.command,
            pending.serial,
            why,
        )

    def _status(self, serial: str, msg: Incoming) -> None:
        # A live "offline" while we wait is the MQTT form of a dropped connection.
        try:
            state = p.loads(bytes(msg.payload)).get("state")
        except p.PayloadError:
            return
        if state != "offline":
            return
        err = ConnectionFailed(f"meter {serial} went offline", endpoint=self.endpoint)
        for pending in self._pending.values():
            if pending.serial == serial and not pending.future.done():
                pending.future.set_exception(err)

    def _fail(self, err: DriverError) -> None:
        err.endpoint = self.endpoint
        self.failed = err
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(err)


class _Pool:
    """Shared connections of one event loop, by broker and login.

    A connection carries at most as many sessions as the broker's Receive Maximum (its
    QoS 1 publishes in flight; Mosquitto's default is 20): each session has one request out
    at a time, so none waits for a free slot behind the others' requests, a wait its
    per-call timeout would count (a 30-day catch-up of 200 MQTT meters on one connection
    queued 180 requests behind 20 slots; benchmarks/README.md, catch-up). Beyond that a
    further connection is opened, up to ``MAX_CONNECTIONS`` per broker and login; past
    those, sessions share the least used one.
    """

    def __init__(self) -> None:
        self._conns: dict[tuple[Any, ...], list[BrokerConnection]] = {}
        self._opening: dict[tuple[Any, ...], asyncio.Future[BrokerConnection]] = {}

    async def acquire(
        self,
        endpoint: Endpoint,
        login: BrokerLogin,
        *,
        timeout: float,
    ) -> BrokerConnection:
        key = (endpoint.host, endpoint.port, login.key())
        while True:
            conns = self._conns.setdefault(key, [])
            for failed in [c for c in conns if c.failed is not None]:  # replace them
                conns.remove(failed)
                asyncio.ensure_future(failed.close())
            # The least used connection with a free slot; when all are full and no more may
            # be opened, the least used one.
            conn = min(conns, key=lambda c: (c.users >= c.capacity, c.users), default=None)
            opening = self._opening.get(key)
            if conn is not None and (
                conn.users < conn.capacity or (opening is None and len(conns) >= MAX_CONNECTIONS)
            ):
                conn.users += 1
                if conn._idle is not None:
                    conn._idle.cancel()
                    conn._idle = None
                return conn
            if opening is None:
                opening = self._opening[key] = asyncio.ensure_future(
                    self._open(key, endpoint, login, timeout)
                )
            try:
                await asyncio.shield(opening)
            except DriverError:
                live = [c for c in conns if c.failed is None]
                if not live:
                    raise
                # A further connection refused: the open ones are shared instead.
                conn = min(live, key=lambda c: c.users)
                conn.users += 1
                return conn
            finally:
                if opening.done():
                    self._opening.pop(key, None)

    async def _open(
        self,
        key: tuple[Any, ...],
        endpoint: Endpoint,
        login: BrokerLogin,
        timeout: float,
    ) -> BrokerConnection:
        conn = BrokerConnection(endpoint, login, timeout=timeout)
        try:
            async with asyncio.timeout(timeout):
                await conn.open()
        except TimeoutError as exc:
            await conn.close()
            raise ConnectionFailed(f"broker {endpoint} did not answer", endpoint=endpoint) from exc
        self._conns.setdefault(key, []).append(conn)
        return conn

    def release(self, conn: BrokerConnection, idle_close: float = IDLE_CLOSE) -> None:
        conn.users -= 1
        if conn.users > 0:
            return
        if conn.failed is not None:
            idle_close = 0
        conn._idle = asyncio.get_running_loop().call_later(
            idle_close, lambda: asyncio.ensure_future(self._close_idle(conn))
        )

    async def _close_idle(self, conn: BrokerConnection) -> None:
        if conn.users > 0:
            return
        for conns in self._conns.values():
            if conn in conns:
                conns.remove(conn)
        await conn.close()

    async def close_all(self) -> None:
        conns, self._conns = self.connections(), {}
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)

    def connections(self) -> list[BrokerConnection]:
        return [c for conns in self._conns.values() for c in conns]


# --- sessions ----------------------------------------------------------------------------


class MqttSession(MeterSession):
    """One CGM-to-meter session on a shared broker connection; see the module docstring."""

    def __init__(
        self,
        conn: BrokerConnection,
        pool: _Pool,
        credentials: Credentials,
        timeout: float,
        *,
        serial: str,
        prefix: str,
        auth_mode: str,
        register_max: float | None = None,
    ) -> None:
        super().__init__(conn.endpoint, credentials, timeout)
        self.serial = serial
        self.prefix = prefix
        self.auth_mode = auth_mode
        self.connection = conn
        self._pool = pool
        self._cmd_topic = p.command_topic(prefix, serial)
        self._closed = False
        self.meter_level: int | None = None  # level the meter granted at hello
        self._values: str | None = None  # interval | cumulative, from read_profile_config
        self._period: timedelta | None = None
        self._reg_max = register_max  # where the meter's registers wrap, if known

    async def _request(
        self, command: str, args: Mapping[str, Any] | None = None
    ) -> tuple[dict[str, Any], datetime, datetime]:
        """Send one signed command; return (result, sent_at, received_at) or raise."""
        if self._closed:
            raise ConnectionFailed("session closed", endpoint=self.endpoint)
        sent_at = utcnow()
        body = p.build_request(
            self.serial,
            command,
            args or {},
            self.credentials.level,
            self.credentials.secret,
            self.credentials.client,
            sent_at,
        )
        pending = _Pending(
            asyncio.get_running_loop().create_future(),
            self.serial,
            command,
            int(self.credentials.level),
            body["auth"]["nonce"],
            self.credentials.secret,
            self.auth_mode,
            events=self.events,
        )
        answer, received_at = await self.connection.request(
            pending, self.prefix, self._cmd_topic, p.dumps(body), self.timeout
        )
        try:
            result = p.parse_response(answer, self.serial, command)
        except p.MeterError as exc:
            raise self._meter_error(command, exc) from exc
        except p.PayloadError as exc:
            raise ProtocolError(f"{command}: {exc}", endpoint=self.endpoint) from exc
        return result, sent_at, received_at

    def _meter_error(self, command: str, exc: p.MeterError) -> DriverError:
        kind: type[DriverError] = {
            "auth": AuthenticationFailed,
            "access_denied": AccessDenied,
            "unsupported": NotSupported,
            "bad_request": ProtocolError,
        }.get(exc.code, DriverError)
        return kind(f"{command} on {self.serial}: {exc}", endpoint=self.endpoint)

    def _decode(self, command: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except p.PayloadError as exc:
            raise ProtocolError(f"{command}: {exc}", endpoint=self.endpoint) from exc

    # --- MeterSession ---------------------------------------------------------------------

    async def _hello(self) -> None:
        result, _, _ = await self._request("hello")
        level = result.get("level")
        if level not in (1, 2):
            raise ProtocolError("hello: level missing", endpoint=self.endpoint)
        self.meter_level = level

    async def _identify(self) -> MeterIdentity:
        result, _, _ = await self._request("identify")
        return MeterIdentity(*self._decode("identify", p.decode_identity, result))

    async def _read_clock(self) -> ClockReading:
        result, sent_at, received_at = await self._request("read_clock")
        meter_time = self._decode("read_clock", p.parse_time, result.get("time"), "time")
        status = result.get("status")
        return ClockReading(meter_time, sent_at, received_at, status=status)

    async def _set_clock(self, when: datetime) -> None:
        await self._request("set_clock", {"time": p.iso(when)})

    async def _read_profile_config(self) -> ProfileConfig:
        result, _, _ = await self._request("read_profile_config")
        config: ProfileConfig = self._decode("read_profile_config", p.decode_profile_config, result)
        self._values = self._decode("read_profile_config", p.values_kind, result)
        self._period = config.capture_period
        return config

    async def _read_profile(self, start: datetime, end: datetime) -> list[ProfileEntry]:
        if self._values is None:
            await self._read_profile_config()
        period = self._period
        ask_from = start - period if self._values == p.VALUES_CUMULATIVE and period else start
        result, _, _ = await self._request(
            "read_profile", {"from": p.iso(ask_from), "to": p.iso(end)}
        )
        kind = self._decode("read_profile", p.values_kind, result)
        entries: list[ProfileEntry] = self._decode("read_profile", p.decode_entries, result)
        if kind == p.VALUES_CUMULATIVE:
            entries = self._differenced(entries, period)
        entries = sorted((e for e in entries if start <= e.start < end), key=lambda e: e.start)
        return entries

    def _differenced(
        self, rows: list[ProfileEntry], period: timedelta | None
    ) -> list[ProfileEntry]:
        """Register readings (one per entry, at its end) to interval energies: the one
        cumulative-to-interval path of all drivers (drivers.cumulative)."""
        if period is None:
            if not rows:
                return []
            period = rows[0].period
        cumulative = [CumulativeRow(e.end, dict(e.values), e.status) for e in rows]
        entries, events = profile_entries(cumulative, period=period, register_max=self._reg_max)
        for event in events:
            self.events.append(SessionEvent(str(event.kind), str(event)))
            log.warning("MQTT meter %s: %s: %s", self.serial, event.kind, event)
        return entries

    async def _read_registers(self) -> list[RegisterValue]:
        result, _, received_at = await self._request("read_registers")
        regs = self._decode("read_registers", p.decode_registers, result)
        return [RegisterValue(ch, value, unit, received_at) for ch, value, unit in regs]

    async def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._pool.release(self.connection)


def login_from_params(params: Mapping[str, Any]) -> BrokerLogin:
    """The broker login of a meter: ``params['broker_login']`` (a :class:`BrokerLogin`, as
    the CGM builds it from its encrypted credentials), else the plain ``username`` /
    ``password`` / ``tls`` / ``ca_file`` params (tests and ``cgm probe``)."""
    login = params.get("broker_login")
    if isinstance(login, BrokerLogin):
        return login
    return BrokerLogin(
        username=params.get("username"),
        password=params.get("password"),
        tls=bool(params.get("tls", False)),
        ca_file=params.get("ca_file"),
        client_cert=params.get("client_cert"),
        client_key=params.get("client_key"),
    )


class MqttDriver(Driver):
    """``protocol = "mqtt"``. Params: ``serial`` (required), ``topic_prefix`` (``"cgm"``),
    ``answer_auth`` (``signature`` | ``broker_acl``), ``tls``, ``ca_file``, ``client_cert``
    and the broker login (``broker_login``, or ``username`` / ``password``)."""

    protocol = "mqtt"

    def __init__(self) -> None:
        self._pools: dict[asyncio.AbstractEventLoop, _Pool] = {}

    def pool(self) -> _Pool:
        loop = asyncio.get_running_loop()
        for other in [lp for lp in self._pools if lp.is_closed()]:
            del self._pools[other]
        pool = self._pools.get(loop)
        if pool is None:
            pool = self._pools[loop] = _Pool()
        return pool

    async def close_all(self) -> None:
        """Close this loop's shared connections (at service shutdown)."""
        await self.pool().close_all()

    async def connect(
        self,
        endpoint: Endpoint,
        credentials: Credentials,
        params: Mapping[str, Any] | None = None,
        timeout: float = 10.0,
    ) -> MqttSession:
        params = dict(params or {})
        serial = params.get("serial")
        if not isinstance(serial, str) or not serial:
            raise ValueError("the mqtt driver needs params['serial']")
        auth_mode = params.get("answer_auth") or p.AUTH_SIGNATURE
        if auth_mode not in p.ANSWER_AUTH_MODES:
            raise ValueError(f"answer_auth must be one of {', '.join(p.ANSWER_AUTH_MODES)}")
        prefix = params.get("topic_prefix") or p.DEFAULT_PREFIX
        pool = self.pool()
        conn = await pool.acquire(endpoint, login_from_params(params), timeout=timeout)
        reg_max = params.get("register_max")
        session = MqttSession(
            conn, pool, credentials, timeout, serial=serial, prefix=prefix, auth_mode=auth_mode,
            register_max=float(reg_max) if reg_max is not None else None,
        )  # fmt: skip
        try:
            async with asyncio.timeout(timeout):
                await conn.use_prefix(prefix)
            # Authenticate now, as other drivers do at association: a wrong secret fails here.
            await session._call("connect", session._hello)
        except TimeoutError as exc:
            await session.close()
            raise MeterTimeout(f"broker {endpoint} did not answer", endpoint=endpoint) from exc
        except BaseException:
            await session.close()
            raise
        return session


DRIVER = MqttDriver()


# --- pushed profile entries ----------------------------------------------------------------

# What a subscriber knows of a meter to authenticate its pushes: its level-1 secret, or
# AUTH_BROKER_ACL when the broker's ACL vouches for the topic; None: not a meter we know.
PushAuth = Callable[[str], str | None]
# Told of each refused push of a known meter: (serial, reason).
Refusal = Callable[[str, str], None]


@dataclass(frozen=True)
class Delivery:
    """One authenticated push: its entries, and ``ack`` to call once they are stored (a
    durable subscription's broker sends unacknowledged pushes again on resume)."""

    serial: str
    entries: list[ProfileEntry]
    ack: Callable[[], None]


def _acked_on_arrival() -> None:
    """Acknowledging is the connection's job when it acknowledges on arrival."""


class ProfileSubscription:
    """Authenticated pushed entries as ``(serial, ProfileEntry)``; see
    :func:`subscribe_profiles`."""

    def __init__(
        self,
        endpoint: Endpoint,
        login: BrokerLogin,
        *,
        prefix: str,
        serials: Iterable[str] | None,
        auth: PushAuth,
        client_id: str | None,
        session_expiry: int | None,
        timeout: float,
        max_queued: int = 100_000,
        on_refused: Refusal | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.prefix = prefix
        self.serials = None if serials is None else set(serials)
        self._login = login
        self._auth = auth
        self._client_id = client_id
        self._session_expiry = session_expiry
        self._timeout = timeout
        self._on_refused = on_refused
        self._queue: asyncio.Queue[Delivery | DriverError] = asyncio.Queue(max_queued)
        self._conn: BrokerConnection | None = None
        self._pool: _Pool | None = None
        self._lean: LeanClient | None = None
        self.skipped = 0  # malformed messages dropped (logged)
        self.rejected = 0  # unauthenticated messages dropped (logged)
        self.cumulative = 0  # pushes of register readings, left to the cycle

    async def __aenter__(self) -> Self:
        if self._client_id and self._session_expiry:
            await self._open_durable()
            return self
        self._pool = DRIVER.pool()
        self._conn = await self._pool.acquire(self.endpoint, self._login, timeout=self._timeout)
        try:
            await self._conn.add_profile_listener(self.prefix, self._on_message)
        except BaseException:
            self._pool.release(self._conn)
            raise
        return self

    async def _open_durable(self) -> None:
        """A durable subscription: a connection of its own under the fixed client id,
        through the lean receive-only client (``drivers/mqtt/lean.py``), acknowledging each
        push only when its ``Delivery.ack`` is called."""
        assert self._client_id is not None and self._session_expiry
        lean = LeanClient(self._on_lean, manual_ack=True)
        try:
            await lean.connect(
                self.endpoint.host, self.endpoint.port, self._client_id,
                username=self._login.username, password=self._login.password,
                tls=self._login.ssl_context(), clean_start=False,
                session_expiry=self._session_expiry, timeout=self._timeout,
            )  # fmt: skip
            await lean.subscribe(p.all_profiles_filter(self.prefix), 1, timeout=self._timeout)
        except (MqttRefused, OSError, TimeoutError) as exc:
            lean.close()
            raise _broker_error(exc, self.endpoint, "cannot reach") from exc
        except BaseException:
            lean.close()
            raise
        self._lean = lean

    async def __aexit__(self, *exc: object) -> None:
        if self._lean is not None:
            # Closed at once, so that the broker queues for this session meanwhile.
            self._lean.close()
            self._lean = None
        if self._conn is not None and self._pool is not None:
            self._conn.remove_profile_listener(self.prefix, self._on_message)
            self._pool.release(self._conn, IDLE_CLOSE)
            self._conn = None

    def _on_lean(self, msg: Incoming) -> None:
        serial = p.meter_topic_serial(self.prefix, msg.topic, "profile")
        if serial is None:
            msg.ack()
            return
        self._handle(serial, msg.payload, msg.ack)

    def _on_message(self, prefix: str, serial: str, msg: Incoming) -> None:
        self._handle(serial, msg.payload, _acked_on_arrival)  # the shared connection acks

    def _handle(self, serial: str, payload: bytes, ack: Callable[[], None]) -> None:
        if self.serials is not None and serial not in self.serials:
            ack()
            return
        try:
            body = p.loads(payload)
            if body.get("serial") != serial:
                raise p.PayloadError(f"serial {body.get('serial')!r} on {serial}'s topic")
        except p.PayloadError as exc:
            self._refuse(serial, f"malformed: {exc}", "skipped")
            ack()
            return
        secret = self._auth(serial)
        if secret is None or (secret != p.AUTH_BROKER_ACL and not p.verify_push(body, secret)):
            why = "unknown meter" if secret is None else "signature missing or does not verify"
            self._refuse(serial, f"unauthenticated: {why}", "rejected", known=secret is not None)
            ack()
            return
        try:
            if p.values_kind(body) == p.VALUES_CUMULATIVE:
                # A register reading is not an interval: the cycle's read_profile, which
                # asks for the reading before, makes intervals of them.
                self.cumulative += 1
                ack()
                return
            entries = p.decode_entries(body)
        except p.PayloadError as exc:
            self._refuse(serial, f"malformed: {exc}", "skipped")
            ack()
            return
        try:
            self._queue.put_nowait(Delivery(serial, entries, ack))
        except asyncio.QueueFull:
            # Not acknowledged: a durable session gets it again when it resumes.
            self.skipped += 1
            log.warning("profile queue full: entries of %s dropped (read_profile fills it)", serial)

    def _refuse(self, serial: str, reason: str, counter: str, known: bool = True) -> None:
        setattr(self, counter, getattr(self, counter) + 1)
        if counter == "rejected":
            why = reason.removeprefix("unauthenticated: ")
            log.warning("refused unauthenticated profile entries for meter %s (%s)", serial, why)
        else:
            log.warning("skipping bad profile message from %s: %s", serial, reason)
        if known and self._on_refused is not None:
            self._on_refused(serial, reason)

    def __aiter__(self) -> AsyncIterator[tuple[str, ProfileEntry]]:
        return self._iterate()

    async def deliveries(self) -> AsyncIterator[Delivery]:
        """Each authenticated message, as it arrives; call its ``ack`` once stored."""
        while True:
            failed = self._conn.failed if self._conn is not None else None
            if self._lean is not None:
                failed = self._lean.failed
            if failed is not None and self._queue.empty():
                raise ConnectionFailed(f"lost broker {self.endpoint}: {failed}")
            try:
                async with asyncio.timeout(1.0):
                    item = await self._queue.get()
            except TimeoutError:
                continue
            if isinstance(item, DriverError):
                raise item
            yield item

    async def batches(self) -> AsyncIterator[tuple[str, list[ProfileEntry]]]:
        """Each authenticated message's entries, as they arrive (acknowledged at once)."""
        async for d in self.deliveries():
            d.ack()
            yield d.serial, d.entries

    async def _iterate(self) -> AsyncIterator[tuple[str, ProfileEntry]]:
        async for serial, entries in self.batches():
            for entry in entries:
                yield serial, entry


def subscribe_profiles(
    host: str,
    port: int,
    *,
    auth: PushAuth,
    prefix: str = p.DEFAULT_PREFIX,
    serials: Iterable[str] | None = None,
    login: BrokerLogin | None = None,
    client_id: str | None = None,
    session_expiry: int | None = None,
    timeout: float = 10.0,
    on_refused: Refusal | None = None,
) -> ProfileSubscription:
    """Receive authenticated pushed entries: ``async with subscribe_profiles(h, p,
    auth=secrets.get) as sub: async for serial, entry in sub: ...``.

    ``auth(serial)`` gives the meter's level-1 secret (the push is signed with it), or
    :data:`protocol.AUTH_BROKER_ACL`, or None for a meter this CGM does not read; anything
    unauthenticated is logged and dropped. Rides on the process's shared connection to the
    broker; with a fixed ``client_id`` and a ``session_expiry`` (seconds) it has a durable
    connection of its own, and the broker queues QoS 1 entries while the collector is away;
    its pushes are acknowledged only through :meth:`ProfileSubscription.deliveries`' ``ack``.
    ``on_refused(serial, reason)`` hears of each refused push of a meter ``auth`` knows.
    """
    return ProfileSubscription(
        Endpoint(host, port),
        login or BrokerLogin(),
        prefix=prefix,
        serials=serials,
        auth=auth,
        client_id=client_id,
        session_expiry=session_expiry,
        timeout=timeout,
        on_refused=on_refused,
    )
