"""The MQTT driver: MQTT 5 request/response for commands, a subscription for pushed entries.

A session is one aiomqtt connection with a private response topic. Each command is a PUBLISH
to the meter's command topic with Response Topic and Correlation Data properties; the
answer is matched by correlation data, so any number of sessions (and meters) share a
broker without crosstalk. Commands carry an HMAC of the request made with the art. 17
level's secret; the secret itself never leaves the CGM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import datetime
from typing import Any, Self

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

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
    NotSupported,
    ProfileConfig,
    ProfileEntry,
    ProtocolError,
    RegisterValue,
    utcnow,
)
from drivers.mqtt import protocol as p

log = logging.getLogger(__name__)

_BAD_BROKER_CREDENTIALS = {0x86, 0x87, 4, 5}  # MQTT 5 bad user/password, not authorised; 3.1.1


def _broker_error(exc: Exception, endpoint: Endpoint, what: str) -> DriverError:
    rc = getattr(exc, "rc", None)
    code = getattr(rc, "value", rc)
    if code in _BAD_BROKER_CREDENTIALS:
        return AuthenticationFailed(f"broker {endpoint} refused the credentials", endpoint=endpoint)
    return ConnectionFailed(f"{what} broker {endpoint}: {exc}", endpoint=endpoint)


def _client(
    endpoint: Endpoint,
    *,
    identifier: str,
    username: str | None,
    password: str | None,
    timeout: float,
    properties: Properties | None = None,
    clean_start: bool = True,
) -> aiomqtt.Client:
    return aiomqtt.Client(
        endpoint.host,
        endpoint.port,
        username=username,
        password=password,
        identifier=identifier,
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=timeout,
        keepalive=30,
        clean_start=clean_start,
        properties=properties,
    )


class MqttSession(MeterSession):
    """One CGM-to-meter session over a broker; see the module docstring."""

    def __init__(
        self,
        endpoint: Endpoint,
        credentials: Credentials,
        timeout: float,
        *,
        serial: str,
        prefix: str,
        username: str | None,
        password: str | None,
    ) -> None:
        super().__init__(endpoint, credentials, timeout)
        self.serial = serial
        self.prefix = prefix
        self.client_id = f"cgm-{secrets.token_hex(6)}"
        self._username = username
        self._password = password
        self._cmd_topic = p.command_topic(prefix, serial)
        self._status_topic = p.status_topic(prefix, serial)
        self._res_topic = p.response_topic(prefix, self.client_id)
        self._pending: dict[bytes, asyncio.Future[tuple[bytes, datetime]]] = {}
        self._failed: DriverError | None = None
        self._stack = contextlib.AsyncExitStack()
        self._client: aiomqtt.Client | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self.meter_level: int | None = None  # level the meter granted at hello

    async def _open(self) -> None:
        client = _client(
            self.endpoint,
            identifier=self.client_id,
            username=self._username,
            password=self._password,
            timeout=self.timeout,
        )
        try:
            await self._stack.enter_async_context(client)
            await client.subscribe(self._res_topic, qos=1)
            await client.subscribe(self._status_topic, qos=1)
        except (aiomqtt.MqttError, OSError) as exc:
            await self._stack.aclose()
            raise _broker_error(exc, self.endpoint, "cannot reach") from exc
        self._client = client
        self._reader_task = asyncio.create_task(self._read_loop(client))

    async def _read_loop(self, client: aiomqtt.Client) -> None:
        try:
            async for msg in client.messages:
                self._dispatch(msg)
        except aiomqtt.MqttError as exc:
            self._fail(ConnectionFailed(f"lost broker {self.endpoint}: {exc}"))

    def _dispatch(self, msg: aiomqtt.Message) -> None:
        topic = msg.topic.value
        if topic == self._res_topic:
            corr = getattr(msg.properties, "CorrelationData", None)
            fut = self._pending.get(bytes(corr)) if corr else None
            if fut is not None and not fut.done():
                fut.set_result((bytes(msg.payload), utcnow()))
        elif topic == self._status_topic and not msg.retain:
            # A live "offline" while we wait is the MQTT form of a dropped connection.
            try:
                state = p.loads(bytes(msg.payload)).get("state")
            except p.PayloadError:
                return
            if state == "offline":
                err = ConnectionFailed(f"meter {self.serial} went offline", endpoint=self.endpoint)
                for fut in self._pending.values():
                    if not fut.done():
                        fut.set_exception(err)

    def _fail(self, err: DriverError) -> None:
        err.endpoint = self.endpoint
        self._failed = err
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)

    async def _request(
        self, command: str, args: Mapping[str, Any] | None = None
    ) -> tuple[dict[str, Any], datetime, datetime]:
        """Send one signed command; return (result, sent_at, received_at) or raise."""
        if self._failed is not None:
            raise type(self._failed)(str(self._failed), endpoint=self.endpoint)
        assert self._client is not None
        corr = secrets.token_bytes(16)
        fut: asyncio.Future[tuple[bytes, datetime]] = asyncio.get_running_loop().create_future()
        self._pending[corr] = fut
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self._res_topic
        props.CorrelationData = corr
        props.ContentType = "application/json"
        # A request nobody picked up in time is worthless; let the broker drop it.
        props.MessageExpiryInterval = max(1, math.ceil(self.timeout))
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
        try:
            try:
                await self._client.publish(self._cmd_topic, p.dumps(body), qos=1, properties=props)
            except aiomqtt.MqttError as exc:
                raise ConnectionFailed(
                    f"{command}: publish failed: {exc}", endpoint=self.endpoint
                ) from exc
            payload, received_at = await fut
        finally:
            self._pending.pop(corr, None)
        try:
            result = p.parse_response(payload, self.serial, command)
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
        return self._decode("read_profile_config", p.decode_profile_config, result)

    async def _read_profile(self, start: datetime, end: datetime) -> list[ProfileEntry]:
        result, _, _ = await self._request("read_profile", {"from": p.iso(start), "to": p.iso(end)})
        entries: list[ProfileEntry] = self._decode("read_profile", p.decode_entries, result)
        entries = sorted((e for e in entries if start <= e.start < end), key=lambda e: e.start)
        return entries

    async def _read_registers(self) -> list[RegisterValue]:
        result, _, received_at = await self._request("read_registers")
        regs = self._decode("read_registers", p.decode_registers, result)
        return [RegisterValue(ch, value, unit, received_at) for ch, value, unit in regs]

    async def _close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            await asyncio.wait([self._reader_task], timeout=1.0)
        self._fail(ConnectionFailed("session closed"))
        with contextlib.suppress(Exception):
            await self._stack.aclose()


class MqttDriver(Driver):
    """``protocol = "mqtt"``. Params: ``serial`` (required), ``topic_prefix`` (``"cgm"``),
    ``username`` / ``password`` (broker account, optional)."""

    protocol = "mqtt"

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
        session = MqttSession(
            endpoint,
            credentials,
            timeout,
            serial=serial,
            prefix=params.get("topic_prefix") or p.DEFAULT_PREFIX,
            username=params.get("username"),
            password=params.get("password"),
        )
        try:
            await asyncio.wait_for(session._open(), timeout)
        except TimeoutError as exc:
            raise ConnectionFailed(f"broker {endpoint} did not answer", endpoint=endpoint) from exc
        try:
            # Authenticate now, as other drivers do at association: a wrong secret fails here.
            await session._call("connect", session._hello)
        except BaseException:
            await session.close()
            raise
        return session


# --- pushed profile entries ----------------------------------------------------------------


class ProfileSubscription:
    """Pushed hourly entries as ``(serial, ProfileEntry)``; see :func:`subscribe_profiles`."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        prefix: str,
        serials: Iterable[str] | None,
        username: str | None,
        password: str | None,
        client_id: str | None,
        session_expiry: int | None,
        timeout: float,
    ) -> None:
        self.endpoint = endpoint
        self.prefix = prefix
        self.serials = None if serials is None else list(serials)
        self._timeout = timeout
        props = None
        if session_expiry:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = session_expiry
        self._client = _client(
            endpoint,
            identifier=client_id or f"cgm-profiles-{secrets.token_hex(6)}",
            username=username,
            password=password,
            timeout=timeout,
            properties=props,
            # A durable subscriber resumes its session and gets what was queued meanwhile.
            clean_start=not (client_id and session_expiry),
        )
        self.skipped = 0  # malformed messages dropped (logged)

    async def __aenter__(self) -> Self:
        try:
            await self._client.__aenter__()
            if self.serials is None:
                await self._client.subscribe(p.all_profiles_filter(self.prefix), qos=1)
            else:
                for serial in self.serials:
                    await self._client.subscribe(p.profile_topic(self.prefix, serial), qos=1)
        except (aiomqtt.MqttError, OSError) as exc:
            with contextlib.suppress(Exception):
                await self._client.__aexit__(None, None, None)
            raise _broker_error(exc, self.endpoint, "cannot reach") from exc
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self._client.__aexit__(None, None, None)

    def __aiter__(self) -> AsyncIterator[tuple[str, ProfileEntry]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[tuple[str, ProfileEntry]]:
        try:
            async for msg in self._client.messages:
                serial = p.meter_topic_serial(self.prefix, msg.topic.value, "profile")
                if serial is None:
                    continue
                try:
                    body = p.loads(bytes(msg.payload))
                    if body.get("serial") != serial:
                        raise p.PayloadError(f"serial {body.get('serial')!r} on {serial}'s topic")
                    entries = p.decode_entries(body)
                except p.PayloadError as exc:
                    self.skipped += 1
                    log.warning("skipping bad profile message from %s: %s", serial, exc)
                    continue
                for entry in entries:
                    yield serial, entry
        except aiomqtt.MqttError as exc:
            raise ConnectionFailed(f"lost broker {self.endpoint}: {exc}") from exc


def subscribe_profiles(
    host: str,
    port: int,
    *,
    prefix: str = p.DEFAULT_PREFIX,
    serials: Iterable[str] | None = None,
    username: str | None = None,
    password: str | None = None,
    client_id: str | None = None,
    session_expiry: int | None = None,
    timeout: float = 10.0,
) -> ProfileSubscription:
    """Receive pushed profile entries: ``async with subscribe_profiles(h, p) as sub:
    async for serial, entry in sub: ...``.

    Subscribed (QoS 1) once the ``async with`` is entered. With a fixed ``client_id`` and a
    ``session_expiry`` (seconds) the broker keeps the subscription and queues entries while
    the collector is away. Push is the fast path; gaps are filled by ``read_profile``.
    """
    return ProfileSubscription(
        Endpoint(host, port),
        prefix=prefix,
        serials=serials,
        username=username,
        password=password,
        client_id=client_id,
        session_expiry=session_expiry,
        timeout=timeout,
    )
