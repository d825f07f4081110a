"""The embedded broker refuses oversized packets from their fixed header, over a real socket."""

from __future__ import annotations

import asyncio
import struct

import aiomqtt
import pytest

from cgm.embedded.broker import MAX_CONNECT_PACKET, Broker


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


async def _read_all(reader: asyncio.StreamReader, timeout: float) -> bytes:
    async with asyncio.timeout(timeout):
        return await reader.read(-1)  # until the broker closes


async def test_oversized_connect_is_refused_before_it_is_read() -> None:
    """A CONNECT announcing 256 MB is answered CONNACK 0x95 and closed after its header,
    while the client has sent only a few kilobytes of it."""
    async with Broker() as broker:
        reader, writer = await asyncio.open_connection(*broker.address)
        writer.write(bytes([0x10]) + _varint(256 * 1024 * 1024 - 1) + b"\x00\x04MQTT\x05")
        writer.write(b"\x00" * 4096)
        await writer.drain()
        answer = await _read_all(reader, 5)
        writer.close()
    assert answer[:1] == b"\x20"  # CONNACK
    assert answer[3] == 0x95  # packet too large
    assert len(answer) < 16


async def test_flood_after_oversized_connect_cannot_be_pushed_in() -> None:
    """Streaming the announced body gets the connection reset long before 256 MB."""
    async with Broker() as broker:
        reader, writer = await asyncio.open_connection(*broker.address)
        writer.write(bytes([0x10]) + _varint(256 * 1024 * 1024 - 1))
        sent = 0
        with pytest.raises(ConnectionError):
            async with asyncio.timeout(10):
                while sent < 256 * 1024 * 1024:
                    writer.write(b"\x00" * 65536)
                    await writer.drain()
                    sent += 65536
        writer.close()
    assert sent < 64 * 1024 * 1024


async def test_connect_must_arrive_in_time() -> None:
    async with Broker(connect_timeout=0.3) as broker:
        reader, writer = await asyncio.open_connection(*broker.address)
        answer = await _read_all(reader, 5)  # closed without a byte from us
        writer.close()
    assert answer == b""


async def test_packet_cap_after_login_is_announced_and_enforced() -> None:
    cap = 2 * MAX_CONNECT_PACKET
    v5 = aiomqtt.ProtocolVersion.V5
    async with Broker(users={"cgm": "pw"}, max_packet_size=cap) as broker:
        async with aiomqtt.Client(*broker.address, username="cgm", password="pw", protocol=v5) as c:
            await c.subscribe("t/#", qos=1)
            await c.publish("t/small", b"x" * (cap - 100), qos=1)
            async with asyncio.timeout(3):
                msg = await anext(aiter(c.messages))
            assert len(msg.payload) == cap - 100  # type: ignore[arg-type]
        # The same flood from a logged-in client: disconnected at the header.
        reader, writer = await asyncio.open_connection(*broker.address)
        body = (
            b"\x00\x04MQTT\x05\xc2\x00\x0a\x00"  # v5, username+password+clean start, ka 10
            + struct.pack("!H", 3)
            + b"c-1"
            + struct.pack("!H", 3)
            + b"cgm"
            + struct.pack("!H", 2)
            + b"pw"
        )
        writer.write(bytes([0x10]) + _varint(len(body)) + body)
        await writer.drain()
        connack = await reader.readexactly(2)
        rest = await reader.readexactly(connack[1])
        assert connack[0] == 0x20 and rest[1] == 0x00
        assert struct.pack("!I", cap) in rest  # Maximum Packet Size announced
        writer.write(bytes([0x30]) + _varint(cap + 1) + b"\x00\x01t")
        await writer.drain()
        answer = await _read_all(reader, 5)
        writer.close()
    assert answer[:1] == b"\xe0" and answer[2] == 0x95  # DISCONNECT, packet too large
