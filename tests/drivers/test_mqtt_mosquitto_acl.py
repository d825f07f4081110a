"""deploy/mosquitto as shipped, run by a real Mosquitto (tests/fixtures/mosquitto.py): no
anonymous access, per-meter ACL, TLS listener."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import aiomqtt
import pytest
import pytest_asyncio
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from drivers.base import AccessLevel, Credentials, Endpoint
from drivers.mqtt import DRIVER, BrokerLogin, subscribe_profiles
from drivers.mqtt import protocol as p
from simulators.meter import SimulatedMeter
from simulators.mqtt import serve
from tests.fixtures.mosquitto import Deployed, deployed_mosquitto

ACCOUNTS = {"cgm": "cgm-pw", "MQ-ACL-1": "meter-1-pw", "MQ-ACL-2": "meter-2-pw"}
V5 = aiomqtt.ProtocolVersion.V5


@pytest.fixture(scope="module")
def mosquitto(
    tmp_path_factory: pytest.TempPathFactory, mosquitto_programs: tuple[str, str]
) -> Iterator[Deployed]:
    tmp = tmp_path_factory.mktemp("mosquitto")
    with deployed_mosquitto(tmp, ACCOUNTS, mosquitto_programs) as deployed:
        yield deployed


def _login(user: str) -> dict[str, object]:
    return {"username": user, "password": ACCOUNTS[user], "protocol": V5}


@pytest_asyncio.fixture(loop_scope="session")
async def meter_one(mosquitto: Deployed) -> AsyncIterator[SimulatedMeter]:
    """Meter MQ-ACL-1, logged in as itself, not signing: only the ACL vouches for it."""
    meter = SimulatedMeter("MQ-ACL-1")
    sim = await serve([meter], *mosquitto.plain, username="MQ-ACL-1",
                      password=ACCOUNTS["MQ-ACL-1"], push_hourly=False, sign=False)  # fmt: skip
    try:
        yield meter
    finally:
        await sim.stop(clear_retained=True)


async def test_deploy_config_refuses_anonymous_and_wrong_passwords(mosquitto: Deployed) -> None:
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(*mosquitto.plain, protocol=V5):
            pass
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(*mosquitto.plain, username="cgm", password="x", protocol=V5):
            pass


async def test_acl_vouches_for_the_meter_over_plain_and_tls(
    mosquitto: Deployed, meter_one: SimulatedMeter
) -> None:
    creds = Credentials(AccessLevel.READ, "reader-1")
    params = {"serial": "MQ-ACL-1", "answer_auth": p.AUTH_BROKER_ACL}
    login = BrokerLogin("cgm", ACCOUNTS["cgm"])
    async with await DRIVER.connect(
        Endpoint(*mosquitto.plain), creds, {**params, "broker_login": login}, timeout=5
    ) as s:
        assert (await s.identify()).serial == "MQ-ACL-1"
    tls = BrokerLogin("cgm", ACCOUNTS["cgm"], ca_file=str(mosquitto.ca))
    async with await DRIVER.connect(
        Endpoint("127.0.0.1", mosquitto.tls_port), creds, {**params, "broker_login": tls},
        timeout=5,
    ) as s:  # fmt: skip
        assert abs((await s.read_clock()).offset) < 5


async def test_acl_stops_one_meter_answering_or_pushing_for_another(
    mosquitto: Deployed, meter_one: SimulatedMeter
) -> None:
    """Meter 2's account cannot read meter 1's commands nor publish on meter 1's answer and
    profile topics; what it publishes on its own topics does arrive (the control)."""
    got: list[str] = []
    async with (
        aiomqtt.Client(*mosquitto.plain, **_login("cgm")) as cgm,  # type: ignore[arg-type]
        aiomqtt.Client(*mosquitto.plain, **_login("MQ-ACL-2")) as other,  # type: ignore[arg-type]
    ):
        await cgm.subscribe("cgm/v1/clients/+/res/+", qos=1)
        await cgm.subscribe("cgm/v1/meters/+/profile", qos=1)
        await other.subscribe("cgm/v1/meters/MQ-ACL-1/cmd", qos=1)

        async def collect() -> None:
            async for msg in cgm.messages:
                got.append(msg.topic.value)

        async def spy() -> None:
            async for msg in other.messages:
                got.append("spied " + msg.topic.value)

        tasks = [asyncio.create_task(collect()), asyncio.create_task(spy())]
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = b"guess"
        for topic in ("cgm/v1/clients/cgm-x/res/MQ-ACL-1", "cgm/v1/meters/MQ-ACL-1/profile"):
            await other.publish(topic, b'{"schema":"cgm-meter/1"}', 1, properties=props)
        await other.publish("cgm/v1/meters/MQ-ACL-2/profile", b"{}", 1)
        await cgm.publish("cgm/v1/meters/MQ-ACL-1/cmd", b"{}", 1)  # meter 1 only
        await asyncio.sleep(0.5)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert got == ["cgm/v1/meters/MQ-ACL-2/profile"]


async def test_pushes_vouched_by_the_acl_reach_the_collector(
    mosquitto: Deployed,
) -> None:
    meter = SimulatedMeter("MQ-ACL-1", seed=4)
    auth = {"MQ-ACL-1": p.AUTH_BROKER_ACL}.get
    login = BrokerLogin("cgm", ACCOUNTS["cgm"])
    async with subscribe_profiles(*mosquitto.plain, auth=auth, login=login) as sub:
        sim = await serve([meter], *mosquitto.plain, username="MQ-ACL-1",
                          password=ACCOUNTS["MQ-ACL-1"], push_hourly=False, sign=False)  # fmt: skip
        try:
            published = await sim.publish_profile_now()
            async with asyncio.timeout(5):
                serial, entry = await anext(aiter(sub))
        finally:
            await sim.stop(clear_retained=True)
    assert (serial, [entry]) == ("MQ-ACL-1", published["MQ-ACL-1"])


async def test_durable_subscription_logs_in_over_tls_and_refuses_a_wrong_password(
    mosquitto: Deployed,
) -> None:
    """The durable subscription (its own lean connection) with the shipped broker: TLS with
    the deployment's CA, the account's login; a wrong password is AuthenticationFailed."""
    from drivers.base import AuthenticationFailed

    meter = SimulatedMeter("MQ-ACL-1", seed=5)
    auth = {"MQ-ACL-1": p.AUTH_BROKER_ACL}.get
    bad = BrokerLogin("cgm", "wrong", ca_file=str(mosquitto.ca))
    with pytest.raises(AuthenticationFailed):
        async with subscribe_profiles("127.0.0.1", mosquitto.tls_port, auth=auth, login=bad,
                                      client_id="pytest-durable-bad", session_expiry=30):
            pass  # fmt: skip
    login = BrokerLogin("cgm", ACCOUNTS["cgm"], ca_file=str(mosquitto.ca))
    async with subscribe_profiles("127.0.0.1", mosquitto.tls_port, auth=auth, login=login,
                                  client_id="pytest-durable-tls", session_expiry=30) as sub:
        sim = await serve([meter], *mosquitto.plain, username="MQ-ACL-1",
                          password=ACCOUNTS["MQ-ACL-1"], push_hourly=False, sign=False)  # fmt: skip
        try:
            published = await sim.publish_profile_now()
            async with asyncio.timeout(5):
                delivery = await anext(aiter(sub.deliveries()))
                delivery.ack()
        finally:
            await sim.stop(clear_retained=True)
    assert (delivery.serial, delivery.entries) == ("MQ-ACL-1", published["MQ-ACL-1"])
