"""The MQTT driver against the MQTT meter simulator over a real MQTT 5 broker.

The broker is ``mqtt_broker`` (Mosquitto when one answers MQTT 5, else the embedded one;
``CGM_TEST_MQTT_URL=mqtt://127.0.0.1:1`` forces the embedded one). The last tests exercise
the embedded broker directly, whatever ``mqtt_broker`` is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cgm.embedded.broker import Broker, topic_matches
from drivers.base import (
    ALL_CHANNELS,
    AccessDenied,
    AccessLevel,
    AuthenticationFailed,
    Channel,
    ConnectionFailed,
    Credentials,
    Endpoint,
    MeterTimeout,
    ProtocolError,
)
from drivers.mqtt import DRIVER, MqttSession, subscribe_profiles
from drivers.mqtt import protocol as p
from simulators.meter import Faults, SimulatedMeter
from tests.fixtures.mqtt import simulated

READER = Credentials(AccessLevel.READ, "reader-1", client="test-reader")
CONFIGURER = Credentials(AccessLevel.CONFIGURE, "config-2", client="test-operator")
HOUR = timedelta(hours=1)


def _hour_floor(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


async def session(
    broker: tuple[str, int],
    prefix: str,
    serial: str,
    creds: Credentials = READER,
    timeout: float = 5.0,
) -> MqttSession:
    return await DRIVER.connect(
        Endpoint(*broker), creds, {"serial": serial, "topic_prefix": prefix}, timeout=timeout
    )


async def test_driver_declares_protocol() -> None:
    assert DRIVER.protocol == "mqtt"


async def test_identify(mqtt_broker: tuple[str, int], mqtt_prefix: str) -> None:
    meter = SimulatedMeter("MQ-ID-1", model="SIM-MQTT", firmware="2.3.4")
    async with simulated(mqtt_broker, mqtt_prefix, [meter]):
        async with await session(mqtt_broker, mqtt_prefix, "MQ-ID-1") as s:
            ident = await s.identify()
            assert s.meter_level == 1
    assert (ident.serial, ident.model, ident.firmware) == ("MQ-ID-1", "SIM-MQTT", "2.3.4")
    assert ident.manufacturer == meter.identity.manufacturer


async def test_clock_offset(mqtt_broker: tuple[str, int], mqtt_prefix: str) -> None:
    meter = SimulatedMeter("MQ-CLK-1", clock_offset=45.0)
    async with simulated(mqtt_broker, mqtt_prefix, [meter]):
        async with await session(mqtt_broker, mqtt_prefix, "MQ-CLK-1") as s:
            reading = await s.read_clock()
    assert reading.meter_time.tzinfo is not None
    assert reading.round_trip < 2.0
    assert reading.offset == pytest.approx(45.0, abs=1.0)


async def test_set_clock_level2_then_reread(mqtt_broker: tuple[str, int], mqtt_prefix: str) -> None:
    meter = SimulatedMeter("MQ-SET-2", clock_offset=-600.0)
    async with simulated(mqtt_broker, mqtt_prefix, [meter]):
        async with await session(mqtt_broker, mqtt_prefix, "MQ-SET-2", CONFIGURER) as s:
            assert (await s.read_clock()).offset == pytest.approx(-600.0, abs=1.0)
            await s.set_clock(datetime.now(UTC))
            after = await s.read_clock()
    assert after.offset == pytest.approx(0.0, abs=1.0)
    assert len(meter.clock_adjustments) == 1


async def test_set_clock_level1_is_denied(mqtt_broker: tuple[str, int], mqtt_prefix: str) -> None:
    meter = SimulatedMeter("MQ-SET-1", clock_offset=120.0)
    async with simulated(mqtt_broker, mqtt_prefix, [meter]):
        async with await session(mqtt_broker, mqtt_prefix, "MQ-SET-1", READER) as s:
            with pytest.raises(AccessDenied):
                await s.set_clock(datetime.now(UTC))
            # The session still works for what level 1 may do.
            assert (await s.read_clock()).offset == pytest.approx(120.0, abs=1.0)
    assert meter.clock_adjustments == []


@pytest.mark.parametrize(
    "creds",
    [
        Credentials(AccessLevel.READ, "wrong"),
        Credentials(AccessLevel.CONFIGURE, "reader-1"),  # level-1 secret claimed as level 2
    ],
)
async def test_wrong_secret_fails_authentication(
    mqtt_broker: tuple[str, int], mqtt_prefix: str, creds: Credentials
) -> None:
    meter = SimulatedMeter("MQ-AUTH")
    async with simulated(mqtt_broker, mqtt_prefix, [meter]):
        with pytest.raises(AuthenticationFailed):
            await session(mqtt_broker, mqtt_prefix, "MQ-AUTH", creds)


async def test_secret_is_not_on_the_wire(mqtt_broker: tuple[str, int], mqtt_prefix: str) -> None:
    """Listen to the command topic: the request carries a signature, never the secret."""
    meter = SimulatedMeter("MQ-WIRE")
    seen: list[bytes] = []
    async with aiomqtt.Client(*mqtt_broker, protocol=aiomqtt.ProtocolVersion.V5) as spy:
        await spy.subscribe(p.command_topic(mqtt_prefix, "MQ-WIRE"))
        async with simulated(mqtt_broker, mqtt_prefix, [meter]):
            async with await session(mqtt_broker, mqtt_prefix, "MQ-WIRE", CONFIGURER) as s:
                await s.read_clock()
        async with asyncio.timeout(3):
            async for msg in spy.messages:
                seen.append(bytes(msg.payload))
                if len(seen) == 2:  # hello + read_clock
                    break
    assert all(b"config-2" not in body for body in seen)
    req = json.loads(seen[1])
    assert req["command"] == "read_clock" and req["auth"]["level"] == 2
    assert len(req["auth"]["sig"]) == 64


async def test_replayed_request_is_refused(mqtt_broker: tuple[str, int], mqtt_prefix: str) -> None:
    meter = SimulatedMeter("MQ-REPLAY")
    body = p.dumps(
        p.build_request("MQ-REPLAY", "identify", {}, AccessLevel.READ, "reader-1", None,
                        datetime.now(UTC))
    )  # fmt: skip
    answers: list[dict[str, object]] = []
    async with simulated(mqtt_broker, mqtt_prefix, [meter]):
        async with aiomqtt.Client(*mqtt_broker, protocol=aiomqtt.ProtocolVersion.V5) as c:
            res = f"{mqtt_prefix}/v1/clients/replayer/res"
            await c.subscribe(res)
            for _ in range(2):
                props = Properties(PacketTypes.PUBLISH)
                props.ResponseTopic = res
                props.CorrelationData = b"x"
                await c.publish(
                    p.command_topic(mqtt_prefix, "MQ-REPLAY"), body, 1, properties=props
                )
                async with asyncio.timeout(3):
                    async for msg in c.messages:
                        answers.append(json.loads(msg.payload))
                        break
    assert "result" in answers[0]
    assert answers[1]["error"]["code"] == "auth"  # type: ignore[index]


async def test_latency_beyond_timeout(mqtt_broker: tuple[str, int], mqtt_prefix: str) -> None:
    meter = SimulatedMeter("MQ-SLOW")
    async with simulated(mqtt_broker, mqtt_prefix, [meter]):
        async with await session(mqtt_broker, mqtt_prefix, "MQ-SLOW", timeout=0.5) as s:
            meter.faults.latency = 1.5
            with pytest.raises(MeterTimeout):
                await s.read_clock()
            meter.faults.latency = 0.0
            await asyncio.sleep(1.2)  # let the late answer arrive: it must not be mistaken
            assert (await s.read_clock()).offset == pytest.approx(0.0, abs=1.0)


async def test_silent_meter_times_out_at_connect(
    mqtt_broker: tuple[str, int], mqtt_prefix: str
) -> None:
    meter = SimulatedMeter("MQ-SILENT", faults=Faults(no_answer=True))
    async with simulated(mqtt_broker, mqtt_prefix, [meter]):
        with pytest.raises(MeterTimeout):
            await session(mqtt_broker, mqtt_prefix, "MQ-SILENT", timeout=0.5)


async def test_dropped_meter_goes_offline(mqtt_broker: tuple[str, int], mqtt_prefix: str) -> None:
    meter = SimulatedMeter("MQ-DROP", faults=Faults(drop_after_requests=1))  # hello answered
    async with simulated(mqtt_broker, mqtt_prefix, [meter]):
        async with await session(mqtt_broker, mqtt_prefix, "MQ-DROP", timeout=3.0) as s:
            started = asyncio.get_running_loop().time()
            with pytest.raises(ConnectionFailed, match="offline"):
                await s.identify()
            # Failed on the live status, well before the timeout.
            assert asyncio.get_running_loop().time() - started < 2.0
        meter.faults.drop_after_requests = None
        async with await session(mqtt_broker, mqtt_prefix, "MQ-DROP") as s:
            assert (await s.identify()).serial == "MQ-DROP"


async def test_corrupt_answer_is_protocol_error(
    mqtt_broker: tuple[str, int], mqtt_prefix: str
) -> None:
    meter = SimulatedMeter("MQ-CORRUPT")
    async with simulated(mqtt_broker, mqtt_prefix, [meter]):
        async with await session(mqtt_broker, mqtt_prefix, "MQ-CORRUPT") as s:
            meter.faults.corrupt_next = 1
            with pytest.raises(ProtocolError):
                await s.read_registers()
            assert len(await s.read_registers()) == 4  # the next answer is fine


async def test_broker_unreachable() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConnectionFailed):
        await DRIVER.connect(Endpoint("127.0.0.1", port), READER, {"serial": "X"}, timeout=2)


async def test_missing_entries_are_absent(mqtt_broker: tuple[str, int], mqtt_prefix: str) -> None:
    day = _hour_floor(datetime.now(UTC)) - timedelta(days=2)
    hole = (day + 3 * HOUR, day + 5 * HOUR)
    meter = SimulatedMeter("MQ-HOLE", faults=Faults(missing=[hole]))
    async with simulated(mqtt_broker, mqtt_prefix, [meter]):
        async with await session(mqtt_broker, mqtt_prefix, "MQ-HOLE") as s:
            entries = await s.read_profile(day, day + 24 * HOUR)
    starts = [e.start for e in entries]
    assert len(entries) == 22
    assert day + 3 * HOUR not in starts and day + 4 * HOUR not in starts
    assert day + 2 * HOUR in starts and day + 5 * HOUR in starts
    assert all(e.values[Channel.ACTIVE_IMPORT] > 0 for e in entries)


async def test_register_reset(mqtt_broker: tuple[str, int], mqtt_prefix: str) -> None:
    now = datetime.now(UTC)
    reset = _hour_floor(now) - 2 * HOUR
    meter = SimulatedMeter("MQ-RESET", seed=3, faults=Faults(register_reset_at=reset))
    async with simulated(mqtt_broker, mqtt_prefix, [meter]):
        async with await session(mqtt_broker, mqtt_prefix, "MQ-RESET") as s:
            regs = {r.channel: r for r in await s.read_registers()}
            before = await s.read_profile(reset - 4 * HOUR, reset)
            after = await s.read_profile(reset, reset + 2 * HOUR)
    imported = regs[Channel.ACTIVE_IMPORT]
    assert imported.unit == "kWh" and regs[Channel.REACTIVE_IMPORT].unit == "kvarh"
    # Restarted from zero two hours ago: about three hours of a ~100 kW load, not 1e4+.
    assert imported.value < 500 < meter.initial_register
    assert imported.value >= sum(e.values[Channel.ACTIVE_IMPORT] for e in after) - 1e-6
    assert before == []  # memory restarts with the new meter


async def test_backup_divergence(mqtt_broker: tuple[str, int], mqtt_prefix: str) -> None:
    principal = SimulatedMeter("MQ-P", seed=11)
    backup = SimulatedMeter("MQ-B", seed=11, faults=Faults(divergence_pct=2.0))
    day = _hour_floor(datetime.now(UTC)) - timedelta(days=1)
    async with simulated(mqtt_broker, mqtt_prefix, [principal, backup]):
        sp = await session(mqtt_broker, mqtt_prefix, "MQ-P")
        sb = await session(mqtt_broker, mqtt_prefix, "MQ-B")
        async with sp, sb:
            ep, eb = await asyncio.gather(
                sp.read_profile(day, day + 12 * HOUR), sb.read_profile(day, day + 12 * HOUR)
            )
    assert [e.start for e in ep] == [e.start for e in eb] and len(ep) == 12
    total_p = sum(e.values[Channel.ACTIVE_IMPORT] for e in ep)
    total_b = sum(e.values[Channel.ACTIVE_IMPORT] for e in eb)
    assert total_b / total_p == pytest.approx(1.02, abs=1e-4)


async def test_profile_across_colombian_midnight(
    mqtt_broker: tuple[str, int], mqtt_prefix: str
) -> None:
    today5 = datetime.now(UTC).replace(hour=5, minute=0, second=0, microsecond=0)
    midnight_local = today5 - timedelta(days=2)  # 00:00 in Bogotá = 05:00 UTC
    start, end = midnight_local - 3 * HOUR, midnight_local + 3 * HOUR
    meter = SimulatedMeter("MQ-MIDNIGHT", seed=5)
    async with simulated(mqtt_broker, mqtt_prefix, [meter]):
        async with await session(mqtt_broker, mqtt_prefix, "MQ-MIDNIGHT") as s:
            entries = await s.read_profile(start, end)
    assert [e.start for e in entries] == [start + i * HOUR for i in range(6)]
    assert all(e.period == HOUR and e.start.tzinfo is not None for e in entries)
    assert entries == meter.profile(start, end)  # the wire loses nothing
    assert set(entries[0].values) == set(ALL_CHANNELS)


async def test_profile_config(mqtt_broker: tuple[str, int], mqtt_prefix: str) -> None:
    meter = SimulatedMeter("MQ-CFG", capture_period=timedelta(minutes=15), depth=4000)
    async with simulated(mqtt_broker, mqtt_prefix, [meter]):
        async with await session(mqtt_broker, mqtt_prefix, "MQ-CFG") as s:
            cfg = await s.read_profile_config()
    assert cfg.capture_period == timedelta(minutes=15)
    assert cfg.depth == 4000
    assert cfg.channels == ALL_CHANNELS


async def test_pushed_entries_reach_the_subscriber(
    mqtt_broker: tuple[str, int], mqtt_prefix: str
) -> None:
    meters = [SimulatedMeter("MQ-PUSH-1", seed=1), SimulatedMeter("MQ-PUSH-2", seed=2)]
    async with (
        subscribe_profiles(
            *mqtt_broker, prefix=mqtt_prefix, auth=lambda serial: "reader-1"
        ) as sub,
        simulated(mqtt_broker, mqtt_prefix, meters, push_hourly=False) as sim,
    ):
        published = await sim.publish_profile_now()
        got: dict[str, list[object]] = {}
        async with asyncio.timeout(5):
            async for serial, entry in sub:
                got.setdefault(serial, []).append(entry)
                if sum(map(len, got.values())) == 2:
                    break
    assert got == published
    assert all(len(v) == 1 for v in published.values())


async def test_hourly_push_after_the_hour(mqtt_broker: tuple[str, int], mqtt_prefix: str) -> None:
    """A meter whose clock is 0.5 s before an hour pushes that hour's entry ~2 s after it."""
    real = datetime.now(UTC)
    shift = (_hour_floor(real) + HOUR - timedelta(seconds=0.5)) - real
    meter = SimulatedMeter("MQ-HOURLY", now=lambda: datetime.now(UTC) + shift)
    closing_hour = _hour_floor(meter.real_now())
    async with (
        subscribe_profiles(
            *mqtt_broker, prefix=mqtt_prefix, serials=["MQ-HOURLY"], auth=lambda s: "reader-1"
        ) as sub,
        simulated(mqtt_broker, mqtt_prefix, [meter]),
    ):
        async with asyncio.timeout(8):
            serial, entry = await anext(aiter(sub))
    assert serial == "MQ-HOURLY"
    assert entry.start == closing_hour and entry.period == HOUR


async def test_concurrent_requests_correlate(
    mqtt_broker: tuple[str, int], mqtt_prefix: str
) -> None:
    meters = [
        SimulatedMeter(f"MQ-CC-{i}", clock_offset=10.0 * i, faults=Faults(latency=0.05 * (5 - i)))
        for i in range(6)
    ]
    async with simulated(mqtt_broker, mqtt_prefix, meters):
        sessions = await asyncio.gather(
            *(session(mqtt_broker, mqtt_prefix, m.serial) for m in meters)
        )
        try:
            clocks = await asyncio.gather(*(s.read_clock() for s in sessions))
            idents = await asyncio.gather(*(s.identify() for s in sessions))
        finally:
            await asyncio.gather(*(s.close() for s in sessions))
    for i, (clock, ident) in enumerate(zip(clocks, idents, strict=True)):
        assert ident.serial == f"MQ-CC-{i}"
        assert clock.offset == pytest.approx(10.0 * i, abs=1.0)


async def test_schema_invalid_answer_is_protocol_error(
    mqtt_broker: tuple[str, int], mqtt_prefix: str
) -> None:
    """A hand-made 'meter' answering valid JSON that breaks the schema (kWh as a string)."""

    async def fake_meter(client: aiomqtt.Client) -> None:
        async for msg in client.messages:
            req = json.loads(msg.payload)
            if req["command"] == "hello":
                result: dict[str, object] = {"level": 1}
            elif req["command"] == "read_profile_config":
                result = {"capture_period_s": 3600, "depth": 1000, "channels": ["active_import"]}
            else:
                entry = {"start": "2024-01-01T05:00:00Z", "end": "2024-01-01T06:00:00Z",
                         "values": {"active_import": {"value": "12.5", "unit": "kWh"}}}  # fmt: skip
                result = {"entries": [entry]}
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = msg.properties.CorrelationData  # type: ignore[union-attr]
            answer = p.result_response("MQ-FAKE", req["command"], result)
            signed = p.sign_answer(answer, "reader-1", 1, req["auth"]["nonce"])
            body = p.dumps(signed)
            await client.publish(msg.properties.ResponseTopic, body, 1, properties=props)  # type: ignore[union-attr]

    async with aiomqtt.Client(*mqtt_broker, protocol=aiomqtt.ProtocolVersion.V5) as c:
        await c.subscribe(p.command_topic(mqtt_prefix, "MQ-FAKE"))
        task = asyncio.create_task(fake_meter(c))
        try:
            async with await session(mqtt_broker, mqtt_prefix, "MQ-FAKE") as s:
                with pytest.raises(ProtocolError, match="finite number"):
                    t = datetime(2024, 1, 1, tzinfo=UTC)
                    await s.read_profile(t, t + timedelta(days=1))
        finally:
            task.cancel()


def test_schema_files_are_json_schemas() -> None:
    folder = Path(__file__).parents[2] / "drivers" / "mqtt" / "schema" / "v1"
    names = sorted(f.name for f in folder.glob("*.json"))
    assert names == ["profile.json", "request.json", "response.json", "status.json"]
    for f in folder.glob("*.json"):
        doc = json.loads(f.read_text())
        assert doc["$schema"].startswith("https://json-schema.org/")
        assert doc["$id"].endswith(f"/v1/{f.name}")


# --- the embedded broker itself --------------------------------------------------------------


def test_topic_matching() -> None:
    assert topic_matches("a/#", "a/b/c") and topic_matches("a/#", "a")
    assert not topic_matches("a/#", "ab/c")
    assert topic_matches("a/+/c", "a/b/c") and not topic_matches("a/+/c", "a/b/d/c")
    assert topic_matches("a.b/+", "a.b/x") and not topic_matches("a.b/+", "axb/x")
    assert not topic_matches("#", "$SYS/x") and topic_matches("$SYS/#", "$SYS/x")


async def test_embedded_broker_qos1_retained_will_and_sessions() -> None:
    v5 = aiomqtt.ProtocolVersion.V5
    async with Broker(users={"cgm": "s3cret"}) as broker:
        host, port = broker.address
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(host, port, protocol=v5):
                pass  # anonymous refused when users are configured
        auth = {"username": "cgm", "password": "s3cret", "protocol": v5}

        # Retained + QoS 1 + properties.
        async with aiomqtt.Client(host, port, **auth) as pub:  # type: ignore[arg-type]
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = "r/1"
            props.CorrelationData = b"\x00\x01"
            await pub.publish("m/1/status", b"online", qos=1, retain=True, properties=props)
        async with aiomqtt.Client(host, port, **auth) as sub:  # type: ignore[arg-type]
            await sub.subscribe("m/+/status", qos=1)
            async with asyncio.timeout(2):
                msg = await anext(aiter(sub.messages))
        assert (msg.payload, msg.retain, msg.qos) == (b"online", True, 1)
        assert msg.properties is not None and msg.properties.CorrelationData == b"\x00\x01"

        # Last will on an abrupt disconnect.
        will = aiomqtt.Will("m/2/status", b"offline", qos=1, retain=True)
        async with aiomqtt.Client(host, port, **auth) as watcher:  # type: ignore[arg-type]
            await watcher.subscribe("m/2/status", qos=1)
            dying = aiomqtt.Client(host, port, will=will, **auth)  # type: ignore[arg-type]
            await dying.__aenter__()
            # Simulate a lost link with shutdown, not close: closing the fd under the event
            # loop's registered reader lets the next socket reuse that fd number while the
            # stale registration swallows its events (it broke later tests' connections).
            dying._client.socket().shutdown(socket.SHUT_RDWR)  # noqa: SLF001
            async with asyncio.timeout(3):
                msg = await anext(aiter(watcher.messages))
            with contextlib.suppress(Exception):
                await dying.__aexit__(None, None, None)
        assert msg.payload == b"offline"

        # A persistent session queues QoS 1 messages while its client is away.
        cprops = Properties(PacketTypes.CONNECT)
        cprops.SessionExpiryInterval = 60
        durable = {"identifier": "collector", "properties": cprops, "clean_start": False, **auth}
        async with aiomqtt.Client(host, port, **durable) as c:  # type: ignore[arg-type]
            await c.subscribe("p/#", qos=1)
        async with aiomqtt.Client(host, port, **auth) as pub:  # type: ignore[arg-type]
            await pub.publish("p/x", b"while-away", qos=1)
        async with aiomqtt.Client(host, port, **durable) as c:  # type: ignore[arg-type]
            async with asyncio.timeout(2):
                msg = await anext(aiter(c.messages))
        assert msg.payload == b"while-away"
