"""Golden cases: real meter maps read from raw registers served by another Modbus library.

Each ``modbus_cases/golden/<case>/case.yaml`` gives a map (a shipped model or ``map.yaml``
beside it), the registers exactly as the meter sends them (worked out by hand from the vendor
table and IEEE 754 / two's complement, never by this project's encoders) and the values the
driver must read. The server is pyModbusTCP's, not pymodbus' and not the project's simulator,
so neither the driver's decoder nor the simulator's encoder can agree with itself by accident.
The same cases also check the simulator's independent encoder against the raw registers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pyModbusTCP.server import DataBank, ModbusServer

from drivers.base import AccessLevel, Credentials, Endpoint, NotSupported
from drivers.modbus import DRIVER, load_map
from drivers.modbus.registermap import map_path
from simulators.modbus.image import read_map

GOLDEN = Path(__file__).parent / "modbus_cases" / "golden"
ANY = Credentials(AccessLevel.READ, "unused")  # these meters have no Modbus password


def cases() -> list[Any]:
    return [pytest.param(p, id=p.name) for p in sorted(GOLDEN.iterdir()) if p.is_dir()]


def load_case(case: Path) -> tuple[str, dict[str, dict[int, list[int]]], dict[str, Any]]:
    spec = yaml.safe_load((case / "case.yaml").read_text(encoding="utf-8"))
    ref = spec["map"]
    map_ref = str(case / ref) if ref.endswith(".yaml") else ref
    registers: dict[str, dict[int, list[int]]] = {}
    for function, block in spec["registers"].items():
        registers[function] = {}
        for address, value in block.items():
            if isinstance(value, dict):  # {ascii: text, registers: n}: two characters each
                raw = value["ascii"].encode("ascii").ljust(2 * value["registers"], b"\0")
                value = [raw[i] << 8 | raw[i + 1] for i in range(0, len(raw), 2)]
            registers[function][int(address)] = list(value)
    return map_ref, registers, spec["expect"]


@pytest.fixture
def pymodbustcp_server() -> Iterator[tuple[ModbusServer, DataBank]]:
    bank = DataBank()
    server = ModbusServer("127.0.0.1", 0, no_block=True, data_bank=bank)
    server.start()
    try:
        yield server, bank
    finally:
        server.stop()


@pytest.mark.parametrize("pipeline", [1, 4])  # 4: requests in flight, by transaction id
@pytest.mark.parametrize("case", cases())
async def test_golden_case_read_from_an_independent_server(
    case: Path, pymodbustcp_server: tuple[ModbusServer, DataBank], pipeline: int
) -> None:
    map_ref, registers, expect = load_case(case)
    server, bank = pymodbustcp_server
    for address, regs in registers.get("holding", {}).items():
        assert bank.set_holding_registers(address, regs)
    for address, regs in registers.get("input", {}).items():
        assert bank.set_input_registers(address, regs)
    port = server._service.server_address[1]  # port 0 asked: the one the OS gave
    params = {"map": map_ref, "device_id": 1, "pipeline": pipeline}
    async with await DRIVER.connect(Endpoint("127.0.0.1", port), ANY, params, 5.0) as session:
        assert (await session.identify()).__dict__ == expect["identity"]
        values = {r.channel.value: r.value for r in await session.read_registers()}
        assert values == expect["registers"]
        if load_map(map_ref).clock is None:
            with pytest.raises(NotSupported):
                await session.read_clock()


@pytest.mark.parametrize("case", cases())
def test_simulator_encodes_the_golden_registers(case: Path) -> None:
    """The simulator's encoder, fed the expected values, sends the vendor's raw registers."""
    map_ref, registers, expect = load_case(case)
    sim = read_map(map_ref)
    for channel, value in expect["registers"].items():
        field = sim.registers[channel]
        assert field.encode(value) == registers[field.function][field.address], channel
    serial = sim.identity["serial"]
    assert not isinstance(serial, str)
    value: Any = expect["identity"]["serial"]
    value = value if serial.type == "string" else int(value)
    assert serial.encode(value) == registers[serial.function][serial.address]


def test_every_real_map_has_a_reference_and_a_golden_case() -> None:
    shipped = [p.stem for p in map_path("x").parent.glob("*.yaml")]
    real = [name for name in shipped if not name.startswith("sim-")]
    assert len(real) >= 3
    for name in real:
        reference = load_map(name).reference
        assert reference.get("document") and reference.get("table"), name
        assert (GOLDEN / name / "case.yaml").is_file(), f"{name} has no golden case"
