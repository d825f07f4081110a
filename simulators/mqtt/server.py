"""Serve :class:`SimulatedMeter` objects as cgm-meter/1 MQTT meters over one broker client.

One client stands for a gateway that hosts many meters (as a data concentrator does): it
subscribes to each meter's command topic, answers signed requests on their response topic
with the request's correlation data, and pushes each meter's entry after every capture
period. Faults come from each meter's :class:`Faults`, applied per answer:

* SILENT — no answer (the driver times out);
* DROP — the meter "goes offline": a retained ``offline`` status is published and the
  request is not answered (the driver sees the live status and fails the request);
* CORRUPT — half of the JSON answer, which is not JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Self

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from drivers.base import AccessLevel, ProfileEntry
from drivers.mqtt import protocol as p
from simulators.meter import FaultAction, SimulatedMeter

log = logging.getLogger(__name__)

PUSH_DELAY = timedelta(seconds=2)  # publish an hour's entry this long after it closes
_INFLIGHT = 1000  # QoS-1 answers in flight at once (mosquitto accepts any by default)


async def _cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel until done: on Python 3.11 ``asyncio.wait_for`` (inside aiomqtt's publish)
    swallows a cancellation that lands as its PUBACK arrives, so one cancel() may be lost."""
    while pending := [t for t in tasks if not t.done()]:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.1)
    await asyncio.gather(*tasks, return_exceptions=True)


def _floor(t: datetime, period: timedelta) -> datetime:
    step = int(period.total_seconds())
    ts = int(t.timestamp())
    return datetime.fromtimestamp(ts - ts % step, UTC)


class MqttMeterSimulator:
    """A running simulator; build it with :func:`serve`."""

    def __init__(
        self,
        meters: Iterable[SimulatedMeter],
        host: str,
        port: int,
        *,
        prefix: str = p.DEFAULT_PREFIX,
        username: str | None = None,
        password: str | None = None,
        push_hourly: bool = True,
        replay_window: timedelta = timedelta(hours=24),
    ) -> None:
        self.meters = {m.serial: m for m in meters}
        self.host, self.port, self.prefix = host, port, prefix
        self.push_hourly = push_hourly
        self.replay_window = replay_window
        self.client_id = f"cgm-sim-{secrets.token_hex(6)}"
        self.gateway_status_topic = f"{prefix}/{p.TOPIC_VERSION}/gateways/{self.client_id}/status"
        will = aiomqtt.Will(
            self.gateway_status_topic,
            p.dumps({"schema": p.SCHEMA, "state": "offline"}),
            qos=1,
            retain=True,
        )
        self._client = aiomqtt.Client(
            host,
            port,
            username=username,
            password=password,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            will=will,
            keepalive=30,
            # One client answers for every meter of the gateway: paho's default window of 20
            # unacknowledged QoS-1 answers queued the rest behind it (and warned per answer).
            max_inflight_messages=_INFLIGHT,
        )
        self._client.pending_calls_threshold = _INFLIGHT
        self._answered: dict[tuple[str, str], int] = {}  # (serial, response topic) -> answers
        self._offline: set[str] = set()
        self._nonces: dict[str, dict[str, datetime]] = {s: {} for s in self.meters}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._main: list[asyncio.Task[None]] = []
        self.requests = 0  # commands received (all meters), for tests and benchmarks

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> Self:
        await self._client.__aenter__()
        for serial in self.meters:
            await self._client.subscribe(p.command_topic(self.prefix, serial), qos=1)
            await self._set_status(serial, "online")
        await self._client.publish(
            self.gateway_status_topic,
            p.dumps({"schema": p.SCHEMA, "state": "online"}),
            qos=1,
            retain=True,
        )
        self._main.append(asyncio.create_task(self._serve_requests()))
        if self.push_hourly:
            self._main.append(asyncio.create_task(self._push_loop()))
        return self

    async def stop(self, *, clear_retained: bool = False) -> None:
        """Stop answering, mark every meter offline (or clear the retained statuses), leave."""
        await _cancel_all([*self._main, *self._tasks])
        self._main.clear()
        with contextlib.suppress(aiomqtt.MqttError):
            for serial in self.meters:
                if clear_retained:
                    topic = p.status_topic(self.prefix, serial)
                    await self._client.publish(topic, b"", qos=1, retain=True)
                else:
                    await self._set_status(serial, "offline")
            await self._client.publish(
                self.gateway_status_topic,
                b"" if clear_retained else p.dumps({"schema": p.SCHEMA, "state": "offline"}),
                qos=1,
                retain=True,
            )
        with contextlib.suppress(Exception):
            await self._client.__aexit__(None, None, None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop(clear_retained=True)

    # --- pushing --------------------------------------------------------------------------

    async def publish_profile_now(
        self, serials: Sequence[str] | None = None
    ) -> dict[str, list[ProfileEntry]]:
        """Publish each meter's last complete entry now (what the hourly push sends)."""
        out: dict[str, list[ProfileEntry]] = {}
        for serial in serials if serials is not None else list(self.meters):
            meter = self.meters[serial]
            end = _floor(meter.real_now(), meter.capture_period)
            out[serial] = await self._push(meter, end - meter.capture_period, end)
        return out

    async def _push(
        self, meter: SimulatedMeter, start: datetime, end: datetime
    ) -> list[ProfileEntry]:
        entries = meter.profile(start, end)
        if entries:  # a hole in memory is pushed as nothing, never as zeros
            await self._client.publish(
                p.profile_topic(self.prefix, meter.serial),
                p.dumps(p.profile_message(meter.serial, entries)),
                qos=1,
            )
        return entries

    async def _push_loop(self) -> None:
        last: dict[str, datetime] = {
            s: _floor(m.real_now(), m.capture_period) for s, m in self.meters.items()
        }
        while True:
            waits = [
                (last[s] + m.capture_period + PUSH_DELAY - m.real_now()).total_seconds()
                for s, m in self.meters.items()
            ]
            await asyncio.sleep(max(0.5, min(waits, default=3600.0)))
            for serial, meter in self.meters.items():
                end = _floor(meter.real_now(), meter.capture_period)
                if end > last[serial]:
                    with contextlib.suppress(aiomqtt.MqttError):
                        await self._push(meter, last[serial], end)
                    last[serial] = end

    # --- answering ------------------------------------------------------------------------

    async def _set_status(self, serial: str, state: str) -> None:
        now = self.meters[serial].real_now()
        await self._client.publish(
            p.status_topic(self.prefix, serial),
            p.dumps(p.status_message(serial, state, now)),
            qos=1,
            retain=True,
        )
        if state == "offline":
            self._offline.add(serial)
        else:
            self._offline.discard(serial)

    async def _serve_requests(self) -> None:
        async for msg in self._client.messages:
            serial = p.meter_topic_serial(self.prefix, msg.topic.value, "cmd")
            meter = self.meters.get(serial or "")
            if meter is None:
                continue
            self.requests += 1
            task = asyncio.create_task(self._handle(meter, msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handle(self, meter: SimulatedMeter, msg: aiomqtt.Message) -> None:
        res_topic = getattr(msg.properties, "ResponseTopic", None)
        corr = getattr(msg.properties, "CorrelationData", None)
        if not res_topic:
            log.warning("request to %s without a response topic: ignored", meter.serial)
            return
        key = (meter.serial, res_topic)
        action = await meter.faults.before_answer(self._answered.get(key, 0))
        if action is FaultAction.SILENT:
            return
        if action is FaultAction.DROP:
            await self._set_status(meter.serial, "offline")
            return
        if meter.serial in self._offline:
            await self._set_status(meter.serial, "online")
        response = p.dumps(self._answer(meter, bytes(msg.payload)))
        if action is FaultAction.CORRUPT:
            response = response[: len(response) // 2]
        props = Properties(PacketTypes.PUBLISH)
        if corr is not None:
            props.CorrelationData = corr
        props.ContentType = "application/json"
        await self._client.publish(res_topic, response, qos=1, properties=props)
        self._answered[key] = self._answered.get(key, 0) + 1

    def _answer(self, meter: SimulatedMeter, payload: bytes) -> dict[str, Any]:
        try:
            req = p.parse_request(payload)
        except p.PayloadError as exc:
            return p.error_response(meter.serial, "?", "bad_request", str(exc))
        command = req["command"]
        if req["serial"] != meter.serial:
            return p.error_response(meter.serial, command, "bad_request", "serial mismatch")
        denied = self._check_auth(meter, req)
        if denied is not None:
            return p.error_response(meter.serial, command, *denied)
        try:
            return p.result_response(meter.serial, command, self._execute(meter, req))
        except _Unsupported:
            return p.error_response(meter.serial, command, "unsupported", "unknown command")
        except p.PayloadError as exc:
            return p.error_response(meter.serial, command, "bad_request", str(exc))

    def _check_auth(self, meter: SimulatedMeter, req: dict[str, Any]) -> tuple[str, str] | None:
        auth = req["auth"]
        level = AccessLevel(auth["level"])
        secret = meter.secrets.level2 if level is AccessLevel.CONFIGURE else meter.secrets.level1
        if not p.verify_request(req, secret):
            return "auth", f"signature does not verify for level {int(level)}"
        ts = p.parse_time(auth["ts"])
        now = meter.clock()
        if abs(ts - now) > self.replay_window:
            return "auth", "request timestamp outside the replay window"
        seen = self._nonces[meter.serial]
        for nonce, at in list(seen.items()):
            if abs(now - at) > self.replay_window:
                del seen[nonce]
        if auth["nonce"] in seen:
            return "auth", "replayed nonce"
        seen[auth["nonce"]] = ts
        needed = p.COMMAND_LEVEL.get(req["command"])
        if needed is None:
            return None  # unknown command: answered as unsupported by _execute
        if level < needed:
            return "access_denied", f"{req['command']} needs level {int(needed)}"
        return None

    def _execute(self, meter: SimulatedMeter, req: dict[str, Any]) -> dict[str, Any]:
        command, args = req["command"], req.get("args", {})
        if command == "hello":
            return {"level": int(req["auth"]["level"])}
        if command == "identify":
            ident = meter.identity
            return {
                "serial": ident.serial,
                "manufacturer": ident.manufacturer,
                "model": ident.model,
                "firmware": ident.firmware,
            }
        if command == "read_clock":
            return {"time": p.iso(meter.clock()), "status": 0}
        if command == "set_clock":
            meter.set_clock(p.parse_time(args.get("time"), "args.time"))
            return {}
        if command == "read_profile_config":
            return p.encode_profile_config(meter.profile_config())
        if command == "read_profile":
            start = p.parse_time(args.get("from"), "args.from")
            end = p.parse_time(args.get("to"), "args.to")
            return {"entries": [p.encode_entry(e) for e in meter.profile(start, end)]}
        if command == "read_registers":
            regs = meter.registers()
            return {
                "registers": [
                    {"channel": ch.value, "value": v, "unit": ch.unit} for ch, v in regs.items()
                ],
                "at": p.iso(meter.clock()),
            }
        raise _Unsupported(command)


class _Unsupported(p.PayloadError):
    pass


async def serve(
    meters: Iterable[SimulatedMeter],
    host: str,
    port: int,
    prefix: str = p.DEFAULT_PREFIX,
    *,
    username: str | None = None,
    password: str | None = None,
    push_hourly: bool = True,
) -> MqttMeterSimulator:
    """Connect to the broker and serve ``meters``; ``await handle.stop()`` to end
    (or ``async with await serve(...) as sim:``, which also clears the retained statuses)."""
    sim = MqttMeterSimulator(
        meters,
        host,
        port,
        prefix=prefix,
        username=username,
        password=password,
        push_hourly=push_hourly,
    )
    return await sim.start()
