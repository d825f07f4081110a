"""The driver's MQTT 5 client against a broker that goes silent, and the Receive Maximum of
a real broker. (Everything else it does is exercised against Mosquitto and the embedded
broker by the driver and push tests.)"""

from __future__ import annotations

import asyncio

from cgm.embedded.broker import Broker
from drivers.mqtt.lean import LeanClient


async def test_a_broker_that_goes_silent_ends_the_connection_after_the_keep_alive() -> None:
    """A half-open link (no FIN ever comes): without PINGRESP for 1.5 keep-alives the client
    gives the connection up, so the push consumer reconnects instead of waiting forever."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # the CONNECT
        writer.write(bytes((0x20, 3, 0, 0, 0)))  # CONNACK, success, no properties
        await writer.drain()
        await asyncio.sleep(30)  # then nothing, not even PINGRESP
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = LeanClient(lambda msg: None)
    try:
        await client.connect("127.0.0.1", port, "pytest-silent", keepalive=1)
        assert client.failed is None
        await asyncio.wait_for(asyncio.shield(client.closed), 10)
        assert "keep-alive" in str(client.failed)
    finally:
        client.close()
        server.close()


async def test_publishes_beyond_the_brokers_receive_maximum_wait_their_turn() -> None:
    """More QoS 1 publishes than the broker's Receive Maximum at once: all arrive, in order."""
    async with Broker("127.0.0.1", 0) as broker:
        host, port = broker.address
        got: list[bytes] = []
        sub = LeanClient(lambda msg: got.append(msg.payload))
        pub = LeanClient(lambda msg: None)
        await sub.connect(host, port, "pytest-sub")
        await sub.subscribe("t/#", 1)
        await pub.connect(host, port, "pytest-pub")
        pub.in_flight_max = 3  # as a broker advertising Receive Maximum 3
        for i in range(50):
            pub.publish("t/x", str(i).encode())
        async with asyncio.timeout(10):
            while len(got) < 50:  # noqa: ASYNC110 - a list filled by the protocol callback
                await asyncio.sleep(0.01)
        assert got == [str(i).encode() for i in range(50)]
        sub.close()
        pub.close()
