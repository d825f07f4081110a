"""The Modbus simulator against an independent client (pymodbus'), decoded with pymodbus'
own converters: its framing, byte orders, login, profile window and exception answers are
what a third-party Modbus master sees, not only what the project's driver reads."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from pymodbus.client import AsyncModbusTcpClient

from drivers.base import Channel
from simulators.meter import SimulatedMeter
from simulators.modbus import ModbusSimulator, serve

DT = AsyncModbusTcpClient.DATATYPE
NOW = datetime(2026, 3, 10, 12, 34, 56, tzinfo=UTC)
BOGOTA = timedelta(hours=-5)


@pytest.fixture
async def sim() -> AsyncIterator[tuple[ModbusSimulator, SimulatedMeter]]:
    meter = SimulatedMeter("MB000042", seed=4, firmware="4.2.1", now=lambda: NOW)
    server = await serve({1: meter}, "127.0.0.1", 0, "sim-4q")
    try:
        yield server, meter
    finally:
        await server.stop()


@pytest.fixture
async def client(
    sim: tuple[ModbusSimulator, SimulatedMeter],
) -> AsyncIterator[AsyncModbusTcpClient]:
    c = AsyncModbusTcpClient("127.0.0.1", port=sim[0].port, timeout=2, retries=0)
    assert await c.connect()
    try:
        yield c
    finally:
        c.close()


async def login(c: AsyncModbusTcpClient, secret: str = "reader-1") -> None:
    regs = c.convert_to_registers(secret.ljust(16, "\0"), DT.STRING)
    assert not (await c.write_registers(0xF000, regs, device_id=1)).isError()


async def test_identity_clock_and_registers_as_pymodbus_reads_them(
    sim: tuple[ModbusSimulator, SimulatedMeter], client: AsyncModbusTcpClient
) -> None:
    _, meter = sim
    await login(client)
    level = await client.read_holding_registers(0xF008, count=1, device_id=1)
    assert level.registers == [1]
    ident = await client.read_input_registers(0, count=28, device_id=1)
    serial = client.convert_from_registers(ident.registers[:8], DT.STRING)
    assert serial.rstrip("\0") == "MB000042"
    firmware = client.convert_from_registers(ident.registers[24:28], DT.STRING)
    assert firmware.rstrip("\0") == "4.2.1"
    clock = (await client.read_holding_registers(0x100, count=7, device_id=1)).registers
    local = (NOW + BOGOTA).replace(tzinfo=None)
    assert clock == [local.year, local.month, local.day, local.hour, local.minute, local.second, 0]
    energy = (await client.read_input_registers(0x200, count=16, device_id=1)).registers
    expected = meter.registers()
    for k, ch in enumerate(Channel):
        raw = client.convert_from_registers(energy[4 * k : 4 * k + 4], DT.UINT64)
        assert raw == round(expected[ch] * 1000), ch
    # A read that starts inside one item and ends inside another gets exactly those registers.
    part = (await client.read_input_registers(0x202, count=4, device_id=1)).registers
    assert part == energy[2:6]


async def test_profile_window_as_pymodbus_reads_it(
    sim: tuple[ModbusSimulator, SimulatedMeter], client: AsyncModbusTcpClient
) -> None:
    _, meter = sim
    await login(client)
    start = datetime(2026, 3, 10, 0, tzinfo=UTC)
    selector = int((start + timedelta(hours=1) + BOGOTA).replace(tzinfo=None).timestamp()) - int(
        datetime(1970, 1, 1).timestamp()
    )
    regs = client.convert_to_registers(selector, DT.UINT32)
    assert not (await client.write_registers(0x310, regs, device_id=1)).isError()
    window = (await client.read_holding_registers(0x400, count=110, device_id=1)).registers
    entries = meter.profile(start, start + timedelta(hours=10))
    assert len(entries) == 10
    for k, entry in enumerate(entries):
        record = window[11 * k : 11 * (k + 1)]
        stamp = client.convert_from_registers(record[0:2], DT.UINT32)
        assert stamp == selector + 3600 * k
        assert record[2] == int(entry.status)
        for j, ch in enumerate(Channel):
            wh = client.convert_from_registers(record[3 + 2 * j : 5 + 2 * j], DT.UINT32)
            assert wh == round(entry.values[ch] * 1000), (k, ch)


async def test_exception_answers(
    sim: tuple[ModbusSimulator, SimulatedMeter], client: AsyncModbusTcpClient
) -> None:
    locked = await client.read_input_registers(0x200, count=16, device_id=1)
    assert locked.isError() and locked.exception_code == 1  # the map's access_denied
    guess = client.convert_to_registers("guess".ljust(16, "\0"), DT.STRING)
    wrong = await client.write_registers(0xF000, guess, device_id=1)
    assert wrong.isError() and wrong.exception_code == 3  # the map's auth_failed
    await login(client)
    coils = await client.read_coils(0, count=8, device_id=1)
    assert coils.isError() and coils.exception_code == 1  # ILLEGAL_FUNCTION
    hole = await client.read_holding_registers(0x150, count=2, device_id=1)
    assert hole.isError() and hole.exception_code == 2  # ILLEGAL_ADDRESS
    too_far = await client.read_input_registers(0x20E, count=4, device_id=1)
    assert too_far.isError() and too_far.exception_code == 2  # runs past the last register
    single = await client.write_register(0x300, 60, device_id=1)
    assert single.isError() and single.exception_code == 2  # the period is not writable
    nobody = await client.read_input_registers(0, count=8, device_id=9)
    assert nobody.isError() and nobody.exception_code == 0x0B  # gateway: no answer behind it


async def test_requests_sent_together_are_answered_in_order(
    sim: tuple[ModbusSimulator, SimulatedMeter],
) -> None:
    """Three requests in one TCP write (a pipelining master): three answers, in order, each
    with its own transaction id; checked on the raw bytes."""
    import asyncio

    reader, writer = await asyncio.open_connection("127.0.0.1", sim[0].port)
    password = b"reader-1".ljust(16, b"\0")
    frames = [
        struct.pack(">HHHBBHHB", 7, 0, 7 + 16, 1, 16, 0xF000, 8, 16) + password,
        struct.pack(">HHHBBHH", 8, 0, 6, 1, 3, 0xF008, 1),
        struct.pack(">HHHBBHH", 9, 0, 6, 1, 4, 0x0000, 8),
    ]
    writer.write(b"".join(frames))
    try:
        login_answer = await reader.readexactly(12)
        assert login_answer == struct.pack(">HHHBBHH", 7, 0, 6, 1, 16, 0xF000, 8)
        level_answer = await reader.readexactly(11)
        assert level_answer == struct.pack(">HHHBBBH", 8, 0, 5, 1, 3, 2, 1)
        serial_answer = await reader.readexactly(9 + 16)
        assert serial_answer[:9] == struct.pack(">HHHBBB", 9, 0, 19, 1, 4, 16)
        assert serial_answer[9:] == b"MB000042"[:16].ljust(16, b"\0")
    finally:
        writer.close()
