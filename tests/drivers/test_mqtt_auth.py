"""MQTT: answers and pushes are authenticated per meter, sessions share one broker
connection, and the broker can be reached over TLS with a CA and a client certificate."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cgm.embedded.broker import Broker
from drivers.base import (
    AccessLevel,
    Channel,
    ConnectionFailed,
    Credentials,
    Endpoint,
    MeterTimeout,
)
from drivers.mqtt import DRIVER, BrokerLogin, MqttSession, subscribe_profiles
from drivers.mqtt import protocol as p
from simulators.meter import Faults, SimulatedMeter
from tests.fixtures.mqtt import simulated
from tests.fixtures.tls import ScratchCA

READER = Credentials(AccessLevel.READ, "reader-1", client="test-reader")
ROGUE_KWH = 99999.0


async def session(
    broker: tuple[str, int], prefix: str, serial: str, timeout: float = 5.0, **params: object
) -> MqttSession:
    return await DRIVER.connect(
        Endpoint(*broker),
        READER,
        {"serial": serial, "topic_prefix": prefix, **params},
        timeout=timeout,
    )


@asynccontextmanager
async def rogue(
    broker: tuple[str, int], prefix: str, *, secret: str | None = None, **login: object
) -> AsyncIterator[list[str]]:
    """A client that answers every meter's commands at once with made-up values: unsigned,
    or signed with a ``secret`` that is not the meter's."""
    seen: list[str] = []

    async def answer(client: aiomqtt.Client) -> None:
        async for msg in client.messages:
            req = json.loads(msg.payload)
            seen.append(req["command"])
            start = p.parse_time(req["args"].get("from", "2024-01-01T00:00:00Z"))
            entry = {"start": p.iso(start), "end": p.iso(start + timedelta(hours=1)),
                     "values": {"active_import": {"value": ROGUE_KWH, "unit": "kWh"}}}  # fmt: skip
            result = {
                "hello": {"level": 1},
                "identify": {"serial": req["serial"], "manufacturer": "x", "model": "x",
                             "firmware": "x"},
                "read_clock": {"time": p.iso(datetime.now(UTC) + timedelta(hours=3))},
                "read_profile": {"entries": [entry]},
            }.get(req["command"], {})  # fmt: skip
            body = p.result_response(req["serial"], req["command"], result)
            if secret is not None:
                body = p.sign_answer(body, secret, req["auth"]["level"], req["auth"]["nonce"])
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = msg.properties.CorrelationData  # type: ignore[union-attr]
            topic = msg.properties.ResponseTopic  # type: ignore[union-attr]
            await client.publish(topic, p.dumps(body), 1, properties=props)

    async with aiomqtt.Client(*broker, protocol=aiomqtt.ProtocolVersion.V5, **login) as c:  # type: ignore[arg-type]
        await c.subscribe(f"{prefix}/v1/meters/+/cmd", qos=1)
        task = asyncio.create_task(answer(c))
        try:
            yield seen
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_rogue_answers_are_refused_and_the_meters_own_are_used(
    mqtt_broker: tuple[str, int], mqtt_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A client on the broker answers before the meter; its values never reach the caller."""
    meter = SimulatedMeter("MQ-ROGUE-1", faults=Faults(latency=0.2))
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    caplog.set_level(logging.WARNING, logger="drivers.mqtt.driver")
    async with (
        simulated(mqtt_broker, mqtt_prefix, [meter]),
        rogue(mqtt_broker, mqtt_prefix) as seen,
    ):
        async with await session(mqtt_broker, mqtt_prefix, "MQ-ROGUE-1") as s:
            rejected_before = s.connection.rejected
            clock = await s.read_clock()
            entries = await s.read_profile(start, start + timedelta(hours=3))
            rejected = s.connection.rejected - rejected_before
            events = [e.kind for e in s.events]
    assert seen, "the rogue client did answer"
    assert abs(clock.offset) < 5  # the meter's clock, not the rogue's +3 h
    assert entries == meter.profile(start, start + timedelta(hours=3))
    assert all(e.values[Channel.ACTIVE_IMPORT] != ROGUE_KWH for e in entries)
    assert rejected >= 2
    assert events.count("unauthenticated_answer") >= 2  # counted by cgm per meter
    assert "refused an unauthenticated answer to read_clock for meter MQ-ROGUE-1" in caplog.text


async def test_answer_signed_with_another_secret_is_refused(
    mqtt_broker: tuple[str, int], mqtt_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With no genuine meter, a rogue signing with a guessed secret gets a timeout, never a
    session."""
    caplog.set_level(logging.WARNING, logger="drivers.mqtt.driver")
    async with rogue(mqtt_broker, mqtt_prefix, secret="guessed") as seen:
        with pytest.raises(MeterTimeout):
            await session(mqtt_broker, mqtt_prefix, "MQ-ROGUE-2", timeout=1.0)
    assert seen == ["hello"]
    assert "signature missing or does not verify" in caplog.text


def test_answer_signature_binds_the_request() -> None:
    """An answer replayed to another request (another nonce or level) does not verify."""
    body = p.result_response("M-1", "read_clock", {"time": "2025-03-01T05:00:00Z"})
    signed = p.sign_answer(body, "reader-1", 1, "nonce-a")
    assert p.verify_answer(signed, "reader-1", 1, "nonce-a")
    assert not p.verify_answer(signed, "reader-1", 1, "nonce-b")
    assert not p.verify_answer(signed, "reader-1", 2, "nonce-a")
    assert not p.verify_answer(signed, "other", 1, "nonce-a")
    tampered = json.loads(json.dumps(signed))
    tampered["result"]["time"] = "2025-03-01T06:00:00Z"
    assert not p.verify_answer(tampered, "reader-1", 1, "nonce-a")


async def test_unsigned_meter_is_refused_unless_the_broker_acl_vouches(
    mqtt_broker: tuple[str, int], mqtt_prefix: str
) -> None:
    meter = SimulatedMeter("MQ-UNSIGNED")
    async with simulated(mqtt_broker, mqtt_prefix, [meter], sign=False):
        with pytest.raises(MeterTimeout):
            await session(mqtt_broker, mqtt_prefix, "MQ-UNSIGNED", timeout=1.0)
        async with await session(
            mqtt_broker, mqtt_prefix, "MQ-UNSIGNED", answer_auth=p.AUTH_BROKER_ACL
        ) as s:
            assert (await s.identify()).serial == "MQ-UNSIGNED"


async def test_wrong_secret_is_still_an_authentication_failure(
    mqtt_broker: tuple[str, int], mqtt_prefix: str
) -> None:
    """The meter's refusal cannot be verified with a wrong secret; after the grace period it
    is reported as what it is, not as a timeout."""
    from drivers.base import AuthenticationFailed

    meter = SimulatedMeter("MQ-WRONG")
    async with simulated(mqtt_broker, mqtt_prefix, [meter]):
        with pytest.raises(AuthenticationFailed, match="refused the credentials"):
            await DRIVER.connect(
                Endpoint(*mqtt_broker),
                Credentials(AccessLevel.READ, "not-the-secret"),
                {"serial": "MQ-WRONG", "topic_prefix": mqtt_prefix},
                timeout=2.0,
            )


async def test_pushes_are_accepted_only_when_authenticated(
    mqtt_broker: tuple[str, int], mqtt_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="drivers.mqtt.driver")
    signed = SimulatedMeter("MQ-PUSH-OK", seed=1)
    unsigned = SimulatedMeter("MQ-PUSH-NOSIG", seed=2)
    other_key = SimulatedMeter("MQ-PUSH-KEY", seed=3)
    secrets = {"MQ-PUSH-OK": "reader-1", "MQ-PUSH-NOSIG": "reader-1", "MQ-PUSH-KEY": "other"}
    async with (
        subscribe_profiles(*mqtt_broker, prefix=mqtt_prefix, auth=secrets.get) as sub,
        simulated(mqtt_broker, mqtt_prefix, [unsigned], push_hourly=False, sign=False) as s1,
        simulated(mqtt_broker, mqtt_prefix, [other_key, signed], push_hourly=False) as s2,
    ):
        await s1.publish_profile_now()
        await s2.publish_profile_now(["MQ-PUSH-KEY"])
        published = await s2.publish_profile_now(["MQ-PUSH-OK"])
        async with asyncio.timeout(5):
            serial, entry = await anext(aiter(sub))
        await asyncio.sleep(0.3)
    assert (serial, [entry]) == ("MQ-PUSH-OK", published["MQ-PUSH-OK"])
    assert sub.rejected == 2
    assert "refused unauthenticated profile entries for meter MQ-PUSH-NOSIG" in caplog.text
    assert "refused unauthenticated profile entries for meter MQ-PUSH-KEY" in caplog.text


async def test_sessions_share_one_broker_connection(
    mqtt_broker: tuple[str, int], mqtt_prefix: str
) -> None:
    meters = [SimulatedMeter(f"MQ-SHARE-{i}", clock_offset=float(i)) for i in range(8)]
    async with simulated(mqtt_broker, mqtt_prefix, meters):
        sessions = await asyncio.gather(
            *(session(mqtt_broker, mqtt_prefix, m.serial) for m in meters)
        )
        try:
            clocks = await asyncio.gather(*(s.read_clock() for s in sessions))
            conns = {id(s.connection) for s in sessions}
            first = sessions[0].connection
        finally:
            await asyncio.gather(*(s.close() for s in sessions))
        async with await session(mqtt_broker, mqtt_prefix, "MQ-SHARE-0") as again:
            assert again.connection is first  # reused after the others closed
    assert len(conns) == 1
    assert [round(c.offset) for c in clocks] == list(range(8))


async def test_sessions_beyond_receive_maximum_get_a_further_connection(
    mqtt_broker: tuple[str, int], mqtt_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catch-up timeouts: sessions past the broker's Receive Maximum queued their requests
    behind the others' on one connection, and the per-call timeout counted the wait. A
    connection now takes as many sessions as it has slots; the rest go on another, whose
    answers come back on its own response topic; past MAX_CONNECTIONS they share."""
    meters = [SimulatedMeter(f"MQ-RMAX-{i}", clock_offset=float(i)) for i in range(8)]
    async with simulated(mqtt_broker, mqtt_prefix, meters):
        first = await session(mqtt_broker, mqtt_prefix, meters[0].serial)
        first.connection._client.in_flight_max = 3  # as a broker advertising Receive Maximum 3
        rest = await asyncio.gather(
            *(session(mqtt_broker, mqtt_prefix, m.serial) for m in meters[1:])
        )
        sessions = [first, *rest]
        try:
            clocks = await asyncio.gather(*(s.read_clock() for s in sessions))
            on_first = [s for s in sessions if s.connection is first.connection]
            others = {id(s.connection) for s in sessions} - {id(first.connection)}
        finally:
            await asyncio.gather(*(s.close() for s in sessions))
        assert len(on_first) == 3
        assert len(others) == 1
        assert [round(c.offset) for c in clocks] == list(range(8))

        monkeypatch.setattr("drivers.mqtt.driver.MAX_CONNECTIONS", 1)
        await DRIVER.close_all()
        first = await session(mqtt_broker, mqtt_prefix, meters[0].serial)
        first.connection._client.in_flight_max = 3
        rest = await asyncio.gather(
            *(session(mqtt_broker, mqtt_prefix, m.serial) for m in meters[1:])
        )
        try:
            clocks = await asyncio.gather(*(s.read_clock() for s in (first, *rest)))
            assert all(s.connection is first.connection for s in rest)
        finally:
            await asyncio.gather(*(s.close() for s in (first, *rest)))
        assert [round(c.offset) for c in clocks] == list(range(8))


async def test_lost_broker_fails_pending_and_next_session_reconnects() -> None:
    meter = SimulatedMeter("MQ-RECONNECT", faults=Faults(latency=3.0))
    async with Broker() as broker:
        addr = broker.address
        async with simulated(addr, "cgm", [meter]):
            s = await session(addr, "cgm", "MQ-RECONNECT", timeout=10.0)
            pending = asyncio.create_task(s.read_clock())
            await asyncio.sleep(0.2)
            await broker.stop()
            with pytest.raises(ConnectionFailed):
                await pending
            await s.close()
        await broker.start()
        meter.faults = Faults()
        async with simulated(broker.address, "cgm", [meter]):
            async with await session(broker.address, "cgm", "MQ-RECONNECT") as s2:
                assert s2.connection is not s.connection
                assert (await s2.identify()).serial == "MQ-RECONNECT"


# --- TLS ---------------------------------------------------------------------------------


def _server_context(ca: ScratchCA, *, require_client_cert: bool) -> ssl.SSLContext:
    server = ca.issue("broker", server=True)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(server.cert, server.key)
    if require_client_cert:
        ctx.load_verify_locations(ca.cert)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def test_tls_with_the_configured_ca(tmp_path: Path) -> None:
    ca = ScratchCA(tmp_path)
    meter = SimulatedMeter("MQ-TLS-1")
    tls = {"tls": True, "ca_file": str(ca.cert)}
    async with Broker(users={"cgm": "pw"}, tls=_server_context(ca, require_client_cert=False)) as b:
        sim_ctx = ssl.create_default_context(cafile=ca.cert)
        async with simulated(b.address, "cgm", [meter], tls_context=sim_ctx,
                             username="cgm", password="pw"):  # fmt: skip
            async with await session(
                b.address, "cgm", "MQ-TLS-1", broker_login=BrokerLogin("cgm", "pw", **tls)
            ) as s:
                assert (await s.identify()).serial == "MQ-TLS-1"
            # Without the CA the broker's certificate is not trusted: no session.
            with pytest.raises(ConnectionFailed):
                await session(
                    b.address, "cgm", "MQ-TLS-1", broker_login=BrokerLogin("cgm", "pw", tls=True)
                )
            # Plain MQTT to a TLS listener does not connect either.
            with pytest.raises((ConnectionFailed, MeterTimeout)):
                await session(
                    b.address, "cgm", "MQ-TLS-1", timeout=2.0,
                    broker_login=BrokerLogin("cgm", "pw"),
                )  # fmt: skip


async def test_tls_client_certificate_login(tmp_path: Path) -> None:
    ca = ScratchCA(tmp_path)
    client = ca.issue("cgm-collector", server=False)
    meter_cert = ca.issue("gateway-1", server=False)
    meter = SimulatedMeter("MQ-TLS-2")
    async with Broker(tls=_server_context(ca, require_client_cert=True)) as b:
        sim_ctx = ssl.create_default_context(cafile=ca.cert)
        sim_ctx.load_cert_chain(meter_cert.cert, meter_cert.key)
        async with simulated(b.address, "cgm", [meter], tls_context=sim_ctx):
            login = BrokerLogin(
                ca_file=str(ca.cert), client_cert=str(client.cert), client_key=client.key_pem
            )
            async with await session(b.address, "cgm", "MQ-TLS-2", broker_login=login) as s:
                assert (await s.identify()).serial == "MQ-TLS-2"
            with pytest.raises((ConnectionFailed, MeterTimeout)):
                await session(
                    b.address, "cgm", "MQ-TLS-2", timeout=2.0,
                    broker_login=BrokerLogin(ca_file=str(ca.cert)),
                )  # fmt: skip


# --- meters whose profile captures cumulative registers ------------------------------------


async def test_cumulative_meter_is_read_as_interval_energy(
    mqtt_broker: tuple[str, int], mqtt_prefix: str
) -> None:
    """Register readings become interval energies through drivers.cumulative: the reading
    before the range opens the first interval, and a hole in memory is never bridged."""
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = hour - timedelta(hours=6)
    hole = (start + timedelta(hours=2), start + timedelta(hours=3))
    meter = SimulatedMeter("MQ-CUM-1", faults=Faults(missing=[hole]))
    async with simulated(mqtt_broker, mqtt_prefix, [meter], cumulative=["MQ-CUM-1"]):
        async with await session(mqtt_broker, mqtt_prefix, "MQ-CUM-1") as s:
            entries = await s.read_profile(start, hour)
            events = list(s.events)
    truth = {e.start: e for e in meter.profile(start, hour)}
    got = {e.start: e for e in entries}
    # The hole's interval and the one after it (no reading at its start) are absent.
    assert set(got) == set(truth) - {hole[0] + timedelta(hours=1)}
    assert hole[0] not in got
    for t, e in got.items():
        for ch, v in e.values.items():
            assert v == pytest.approx(truth[t].values[ch], abs=1e-3)
    assert any(ev.kind == "gap" for ev in events)


async def test_cumulative_pushes_are_left_to_the_cycle(
    mqtt_broker: tuple[str, int], mqtt_prefix: str
) -> None:
    meter = SimulatedMeter("MQ-CUM-2")
    async with (
        subscribe_profiles(*mqtt_broker, prefix=mqtt_prefix, auth=lambda s: "reader-1") as sub,
        simulated(mqtt_broker, mqtt_prefix, [meter], push_hourly=False,
                  cumulative=["MQ-CUM-2"]) as sim,  # fmt: skip
    ):
        await sim.publish_profile_now()
        await asyncio.sleep(1.0)  # delivered on loopback in milliseconds
    assert sub.cumulative == 1 and sub.rejected == 0
