"""Serve :class:`SimulatedMeter` objects as cgm-meter/1 MQTT meters over one broker client.

The payloads are encoded and signed by :mod:`simulators.mqtt.wire`, written from the published
contract, never by the driver's ``protocol`` module. Answers are signed with the secret of
the request's level over the request's nonce; pushes with the level-1 secret.

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

from drivers.base import ProfileEntry
from simulators.meter import FaultAction, SimulatedMeter
from simulators.mqtt import wire as w
from simulators.mqtt.publisher import Publisher, answer_properties

log = logging.getLogger(__name__)

PUSH_DELAY = timedelta(seconds=2)  # publish an hour's entry this long after it closes
_INFLIGHT = 1000  # QoS-1 answers in flight at once (mosquitto accepts any by default)


async def _cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel until done: on Python 3.11 ``asyncio.wait_for`` swallows a cancellation that
    lands as what it waits for completes, so one cancel() may be lost."""
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
        prefix: str = w.DEFAULT_PREFIX,
        username: str | None = None,
        password: str | None = None,
        push_hourly: bool = True,
        replay_window: timedelta = timedelta(hours=24),
        tls_context: Any = None,
        sign: bool = True,
        cumulative: Iterable[str] = (),
    ) -> None:
        self.meters = {m.serial: m for m in meters}
        self.host, self.port, self.prefix = host, port, prefix
        self.push_hourly = push_hourly
        self.replay_window = replay_window
        self.sign = sign  # False: a meter that does not sign (refused unless the ACL vouches)
        # Meters whose profile captures their cumulative registers instead of interval energy.
        self.cumulative = set(cumulative)
        self.client_id = f"cgm-sim-{secrets.token_hex(6)}"
        self._login = (username, password, tls_context)
        self._publisher: Publisher | None = None  # pushes: a lean connection of their own
        self._publisher_lock = asyncio.Lock()
        self._profile_topics = {
            s: w.meter_topic(prefix, s, "profile").encode() for s in self.meters
        }
        self.gateway_status_topic = w.gateway_status_topic(prefix, self.client_id)
        # The gateway's connection (commands, answers, statuses; its will marks the gateway
        # offline) on the simulator's own MQTT client (simulators/mqtt/publisher.py).
        self._client = Publisher(self._on_request)
        self._cmd_topics = {w.meter_topic(prefix, s, "cmd"): s for s in self.meters}
        self._answered: dict[tuple[str, str], int] = {}  # (serial, response topic) -> answers
        self._offline: set[str] = set()
        self._nonces: dict[str, dict[str, datetime]] = {s: {} for s in self.meters}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._main: list[asyncio.Task[None]] = []
        self.requests = 0  # commands received (all meters), for tests and benchmarks

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> Self:
        username, password, tls = self._login
        await self._client.open(
            self.host, self.port, self.client_id, username=username, password=password,
            tls=tls, keepalive=30,
            will=(self.gateway_status_topic, w.dumps({"schema": w.SCHEMA, "state": "offline"})),
        )  # fmt: skip
        await self._client.subscribe(list(self._cmd_topics))
        for serial in self.meters:
            self._set_status(serial, "online")
        self._client.send(
            self.gateway_status_topic.encode(),
            w.dumps({"schema": w.SCHEMA, "state": "online"}),
            retain=True,
        )
        await self._client.flushed()
        if self.push_hourly:
            self._main.append(asyncio.create_task(self._push_loop()))
        return self

    async def stop(self, *, clear_retained: bool = False) -> None:
        """Stop answering, mark every meter offline (or clear the retained statuses), leave."""
        await _cancel_all([*self._main, *self._tasks])
        self._main.clear()
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            for serial in self.meters:
                if clear_retained:
                    topic = w.meter_topic(self.prefix, serial, "status")
                    self._client.send(topic.encode(), b"", retain=True)
                else:
                    self._set_status(serial, "offline")
            self._client.send(
                self.gateway_status_topic.encode(),
                b"" if clear_retained else w.dumps({"schema": w.SCHEMA, "state": "offline"}),
                retain=True,
            )
            await self._client.flushed(timeout=10)
        self._client.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop(clear_retained=True)

    # --- pushing --------------------------------------------------------------------------

    async def publish_profile_now(
        self, serials: Sequence[str] | None = None
    ) -> dict[str, list[ProfileEntry]]:
        """Publish each meter's last complete entry now (what the hourly push sends); returns
        once the broker has acknowledged them."""
        out: dict[str, list[ProfileEntry]] = {}
        for serial in serials if serials is not None else list(self.meters):
            meter = self.meters[serial]
            end = _floor(meter.real_now(), meter.capture_period)
            out[serial] = await self._push(meter, end - meter.capture_period, end)
        await self._flushed()
        return out

    async def publish_hour(self, end: datetime) -> dict[str, list[ProfileEntry]]:
        """Publish every meter's entry of the capture period that ends at ``end`` (what the
        hourly push sends; benchmarks choose the hour)."""
        out: dict[str, list[ProfileEntry]] = {}
        for serial, meter in self.meters.items():
            out[serial] = await self._push(meter, end - meter.capture_period, end)
        await self._flushed()
        return out

    async def _pusher(self) -> Publisher:
        async with self._publisher_lock:
            if self._publisher is None or self._publisher.lost is not None:
                username, password, tls = self._login
                pub = Publisher()
                await pub.open(
                    self.host, self.port, f"{self.client_id}-push",
                    username=username, password=password, tls=tls,
                )  # fmt: skip
                self._publisher = pub
            return self._publisher

    async def _flushed(self) -> None:
        if self._publisher is not None:
            await self._publisher.flushed()

    async def _push(
        self, meter: SimulatedMeter, start: datetime, end: datetime
    ) -> list[ProfileEntry]:
        entries = meter.profile(start, end)
        if entries:  # a hole in memory is pushed as nothing, never as zeros
            if meter.serial in self.cumulative:
                parts = {k: w.encode(v) for k, v in self._profile(meter, entries).items()}
            else:
                parts = {"entries": "[" + ",".join([_entry_text(e) for e in entries]) + "]"}
            parts["schema"] = _SCHEMA_TEXT
            parts["serial"] = w.encode(meter.serial)
            if self.sign:
                payload = w.push_payload_text(parts, meter.secrets.level1, meter.clock())
            else:
                text = ",".join([f'"{k}":{parts[k]}' for k in sorted(parts)])
                payload = ("{" + text + "}").encode()
            pub = await self._pusher()
            await pub.publish(self._profile_topics[meter.serial], payload)
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
                    with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                        await self._push(meter, last[serial], end)
                    last[serial] = end
            with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                await self._flushed()

    # --- answering ------------------------------------------------------------------------

    def _set_status(self, serial: str, state: str) -> None:
        now = self.meters[serial].real_now()
        self._client.send(
            w.meter_topic(self.prefix, serial, "status").encode(),
            w.dumps(w.status(serial, state, now)),
            retain=True,
        )
        if state == "offline":
            self._offline.add(serial)
        else:
            self._offline.discard(serial)

    def _on_request(
        self, topic: str, payload: bytes, res_topic: str | None, corr: bytes | None
    ) -> None:
        serial = self._cmd_topics.get(topic)
        meter = self.meters.get(serial or "")
        if meter is None:
            return
        self.requests += 1
        if not res_topic:
            log.warning("request to %s without a response topic: ignored", meter.serial)
            return
        if meter.faults.delay():
            task = asyncio.create_task(self._answer_later(meter, payload, res_topic, corr))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._respond(meter, payload, res_topic, corr)

    async def _answer_later(
        self, meter: SimulatedMeter, payload: bytes, res_topic: str, corr: bytes | None
    ) -> None:
        await asyncio.sleep(meter.faults.delay())
        self._respond(meter, payload, res_topic, corr)

    def _respond(
        self, meter: SimulatedMeter, payload: bytes, res_topic: str, corr: bytes | None
    ) -> None:
        key = (meter.serial, res_topic)
        action = meter.faults.decide(self._answered.get(key, 0))
        if action is FaultAction.SILENT:
            return
        with contextlib.suppress(ConnectionError):
            if action is FaultAction.DROP:
                self._set_status(meter.serial, "offline")
                return
            if meter.serial in self._offline:
                self._set_status(meter.serial, "online")
            response = self._answer(meter, payload)
            if action is FaultAction.CORRUPT:
                response = response[: len(response) // 2]
            props = answer_properties("application/json", corr)
            self._client.send(res_topic.encode(), response, props)
            self._answered[key] = self._answered.get(key, 0) + 1

    def _answer(self, meter: SimulatedMeter, payload: bytes) -> bytes:
        try:
            req = w.parse_request(payload)
        except w.BadRequest as exc:
            return w.dumps(w.answer(meter.serial, "?", error=("bad_request", str(exc))))
        command = req["command"]
        level = req["auth"]["level"]
        secret = meter.secrets.level2 if level == 2 else meter.secrets.level1
        if req["serial"] != meter.serial:
            body = w.answer(meter.serial, command, error=("bad_request", "serial mismatch"))
        elif (denied := self._check_auth(meter, req, secret)) is not None:
            body = w.answer(meter.serial, command, error=denied)
        else:
            try:
                body = w.answer(meter.serial, command, result=self._execute(meter, req))
            except _Unsupported:
                body = w.answer(meter.serial, command, error=("unsupported", "unknown command"))
            except w.BadRequest as exc:
                body = w.answer(meter.serial, command, error=("bad_request", str(exc)))
        if not self.sign:
            return w.dumps(body)
        return w.signed_answer_bytes(body, secret, level, req["auth"]["nonce"])

    def _check_auth(
        self, meter: SimulatedMeter, req: dict[str, Any], secret: str
    ) -> tuple[str, str] | None:
        auth = req["auth"]
        level = auth["level"]
        if not w.request_signature_ok(req, secret):
            return "auth", f"signature does not verify for level {level}"
        ts = w.parse_time_text(auth["ts"], "auth.ts")
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
        needed = w.NEEDS_LEVEL.get(req["command"])
        if needed is None:
            return None  # unknown command: answered as unsupported by _execute
        if level < needed:
            return "access_denied", f"{req['command']} needs level {needed}"
        return None

    def _execute(self, meter: SimulatedMeter, req: dict[str, Any]) -> dict[str, Any]:
        command, args = req["command"], req["args"]
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
            return {"time": w.time_text(meter.clock()), "status": 0}
        if command == "set_clock":
            meter.set_clock(w.parse_time_text(args.get("time"), "args.time"))
            return {}
        if command == "read_profile_config":
            cfg = meter.profile_config()
            config = {
                "capture_period_s": int(cfg.capture_period.total_seconds()),
                "depth": cfg.depth,
                "channels": [str(ch) for ch in cfg.channels],
            }
            if meter.serial in self.cumulative:
                config["values"] = "cumulative"
            return config
        if command == "read_profile":
            start = w.parse_time_text(args.get("from"), "args.from")
            end = w.parse_time_text(args.get("to"), "args.to")
            return self._profile(meter, meter.profile(start, end))
        if command == "read_registers":
            regs = meter.registers()
            return {
                "registers": [
                    {"channel": str(ch), "value": float(v), "unit": w.UNITS[str(ch)]}
                    for ch, v in regs.items()
                ],
                "at": w.time_text(meter.clock()),
            }
        raise _Unsupported(command)

    def _profile(self, meter: SimulatedMeter, entries: list[ProfileEntry]) -> dict[str, Any]:
        """``{entries}``; for a cumulative meter the registers at each entry's end instead
        of its energy (README: ``values: cumulative``), for the same entries (holes too)."""
        if meter.serial not in self.cumulative:
            return {"entries": [_entry(e) for e in entries]}
        regs = meter.register_values([e.end for e in entries])
        rows = [
            w.entry(e.start, e.end, e.status, {str(ch): col[i] for ch, col in regs.items()})
            for i, e in enumerate(entries)
        ]
        return {"values": "cumulative", "entries": rows}


_SCHEMA_TEXT = w.encode(w.SCHEMA)


def _entry_text(e: ProfileEntry) -> str:
    return w.entry_text(e.start, e.end, e.status, {str(ch): v for ch, v in e.values.items()})


def _entry(e: ProfileEntry) -> dict[str, Any]:
    return w.entry(e.start, e.end, e.status, {str(ch): v for ch, v in e.values.items()})


class _Unsupported(w.BadRequest):
    pass




async def serve(
    meters: Iterable[SimulatedMeter],
    host: str,
    port: int,
    prefix: str = w.DEFAULT_PREFIX,
    *,
    username: str | None = None,
    password: str | None = None,
    push_hourly: bool = True,
    tls_context: Any = None,
    sign: bool = True,
    cumulative: Iterable[str] = (),
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
        tls_context=tls_context,
        sign=sign,
        cumulative=cumulative,
    )
    return await sim.start()
