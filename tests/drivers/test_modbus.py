"""Modbus TCP driver against the Modbus meter simulator, over real sockets on 127.0.0.1.

Data-driven cases live in ``modbus_cases/``: ``bad_maps/*.yaml`` (first line ``# expect:``
names the error) and ``read/<case>/`` (a map plus the meter it is served from and what the
driver must read). Cases are named after the bug or behaviour they pin down.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pymodbus.client import AsyncModbusTcpClient

from drivers import get_driver
from drivers.base import (
    AccessDenied,
    AccessLevel,
    AuthenticationFailed,
    Channel,
    ConnectionFailed,
    Credentials,
    EntryStatus,
    MeterTimeout,
    NotSupported,
    ProtocolError,
    utcnow,
)
from drivers.modbus import DRIVER, MapError, ModbusSession, load_map
from simulators.meter import FaultAction, Faults, SimulatedMeter
from simulators.modbus import ModbusSimulator, serve

CASES = Path(__file__).parent / "modbus_cases"
LEVEL1 = Credentials(AccessLevel.READ, "reader-1")
LEVEL2 = Credentials(AccessLevel.CONFIGURE, "config-2")
FIXED_NOW = datetime(2026, 3, 10, 12, 34, 56, tzinfo=UTC)

Serve = Callable[..., Awaitable[ModbusSimulator]]
Connect = Callable[..., Awaitable[ModbusSession]]


@pytest.fixture
async def simulator() -> AsyncIterator[Serve]:
    """Start simulators on ephemeral ports; all stop at teardown."""
    started: list[ModbusSimulator] = []

    async def start(meters: dict[int, SimulatedMeter], **kwargs: Any) -> ModbusSimulator:
        sim = await serve(meters, "127.0.0.1", 0, **kwargs)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        await sim.stop()


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Open driver sessions; all close at teardown."""
    sessions: list[ModbusSession] = []

    async def open_session(
        sim: ModbusSimulator,
        credentials: Credentials = LEVEL1,
        timeout: float = 2.0,
        **params: Any,
    ) -> ModbusSession:
        params.setdefault("map", "sim-4q")
        session = await DRIVER.connect(sim.endpoint, credentials, params, timeout)
        sessions.append(session)
        return session

    yield open_session
    for session in sessions:
        await session.close()


def fixed_clock(now: datetime) -> Callable[[], datetime]:
    return lambda: now


# --- identity, clock, access levels ------------------------------------------------------


async def test_driver_is_registered_under_modbus() -> None:
    assert get_driver("modbus") is DRIVER
    assert DRIVER.protocol == "modbus"


async def test_identity(simulator: Serve, connect: Connect) -> None:
    meter = SimulatedMeter("MB000001", firmware="4.2.1")
    session = await connect(await simulator({1: meter}))
    identity = await session.identify()
    assert (identity.serial, identity.model, identity.firmware) == ("MB000001", "SIM-4Q", "4.2.1")
    assert identity.manufacturer == "CGM Simulated Meters"


async def test_clock_offset_is_measured(simulator: Serve, connect: Connect) -> None:
    session = await connect(await simulator({1: SimulatedMeter("MB1", clock_offset=45)}))
    reading = await session.read_clock()
    # The clock registers hold whole seconds: the offset reads between 44 and 45 s.
    assert 43.9 <= reading.offset <= 45.1
    assert reading.meter_time.tzinfo is not None and reading.status == 0
    assert 0 <= reading.round_trip < 1


async def test_set_clock_at_level_2_and_reread_proves_it(
    simulator: Serve, connect: Connect
) -> None:
    meter = SimulatedMeter("MB1", clock_offset=45)
    session = await connect(await simulator({1: meter}), LEVEL2)
    await session.set_clock(utcnow())
    assert abs((await session.read_clock()).offset) < 1.1
    assert abs(meter.clock_offset) < 0.2  # written on a second boundary, not truncated
    assert len(meter.clock_adjustments) == 1 and meter.clock_adjustments[0][1] < -44


async def test_set_clock_at_level_1_is_denied(simulator: Serve, connect: Connect) -> None:
    meter = SimulatedMeter("MB1", clock_offset=45)
    session = await connect(await simulator({1: meter}), LEVEL1)
    with pytest.raises(AccessDenied):
        await session.set_clock(utcnow())
    assert meter.clock_adjustments == []
    assert 43.9 <= (await session.read_clock()).offset <= 45.1  # the session still reads


async def test_wrong_password_fails_authentication(simulator: Serve, connect: Connect) -> None:
    sim = await simulator({1: SimulatedMeter("MB1")})
    with pytest.raises(AuthenticationFailed):
        await connect(sim, Credentials(AccessLevel.READ, "guess"))


async def test_level_1_password_claimed_as_level_2_fails(
    simulator: Serve, connect: Connect
) -> None:
    sim = await simulator({1: SimulatedMeter("MB1")})
    with pytest.raises(AuthenticationFailed, match="grants level 1"):
        await connect(sim, Credentials(AccessLevel.CONFIGURE, "reader-1"))


async def test_reads_before_login_are_refused_and_login_is_per_connection(
    simulator: Serve,
) -> None:
    """Raw pymodbus clients: the unlock state belongs to the TCP connection."""
    sim = await simulator({1: SimulatedMeter("MB1")})
    regmap = load_map("sim-4q")
    serial = regmap.identity["serial"]
    a = AsyncModbusTcpClient("127.0.0.1", port=sim.port, timeout=2, retries=0)
    b = AsyncModbusTcpClient("127.0.0.1", port=sim.port, timeout=2, retries=0)
    try:
        assert await a.connect() and await b.connect()
        locked = await a.read_input_registers(serial.address, count=serial.size, device_id=1)
        assert locked.isError() and locked.exception_code == regmap.access_denied_code
        password = regmap.password.encode("reader-1", "big")
        ok = await a.write_registers(regmap.password.address, password, device_id=1)
        assert not ok.isError()
        rr = await a.read_input_registers(serial.address, count=serial.size, device_id=1)
        assert not rr.isError() and serial.decode(rr.registers, "big") == "MB1"
        still_locked = await b.read_input_registers(serial.address, count=serial.size, device_id=1)
        assert still_locked.isError()
    finally:
        a.close()
        b.close()


# --- faults ------------------------------------------------------------------------------


async def test_latency_beyond_timeout_is_a_timeout(simulator: Serve, connect: Connect) -> None:
    meter = SimulatedMeter("MB1")
    session = await connect(await simulator({1: meter}), timeout=0.3)
    meter.faults.latency = 1.0
    with pytest.raises(MeterTimeout):
        await session.read_registers()


@pytest.mark.parametrize("pipeline", [1, 4])
async def test_late_answer_after_a_timeout_does_not_spoil_the_next_read(
    simulator: Serve, connect: Connect, pipeline: int
) -> None:
    """Regression: the late answer and the next answer can arrive in one TCP read; the
    stale frame (old transaction id) must be skipped, not reported as a corrupt frame."""
    meter = SimulatedMeter("MB1")
    session = await connect(await simulator({1: meter}), timeout=0.3, pipeline=pipeline)
    meter.faults.latency = 0.4
    with pytest.raises(MeterTimeout):
        await session.read_registers()
    meter.faults.latency = 0.0  # the server is still sleeping on the first answer
    session.timeout = 2.0
    assert len(await session.read_registers()) == 4
    assert (await session.identify()).serial == "MB1"


async def test_silent_meter_is_a_timeout(simulator: Serve, connect: Connect) -> None:
    meter = SimulatedMeter("MB1")
    session = await connect(await simulator({1: meter}), timeout=0.3)
    meter.faults.no_answer = True
    with pytest.raises(MeterTimeout):
        await session.read_clock()


@pytest.mark.parametrize("pipeline", [1, 4])
async def test_dropped_connection_fails_fast(
    simulator: Serve, connect: Connect, pipeline: int
) -> None:
    """A drop fails the request in flight at once with ConnectionFailed, and every later
    call too (pipelined: the identity read sent with the login was never answered)."""
    meter = SimulatedMeter("MB1", faults=Faults(drop_after_requests=2))  # login = 2 answers
    session = await connect(await simulator({1: meter}), timeout=5.0, pipeline=pipeline)
    started = utcnow()
    with pytest.raises(ConnectionFailed):
        await session.read_registers()
    assert (utcnow() - started).total_seconds() < 2  # not left waiting for the timeout
    with pytest.raises(ConnectionFailed):
        await session.identify()  # no silent reconnect: a session is one connection


@pytest.mark.parametrize("pipeline", [1, 4])
@pytest.mark.parametrize("mode", ["length", "function"])
async def test_corrupt_frame_is_a_protocol_error(
    simulator: Serve, connect: Connect, mode: str, pipeline: int
) -> None:
    meter = SimulatedMeter("MB1")
    sim = await simulator({1: meter}, corrupt=mode)
    session = await connect(sim, timeout=5.0, pipeline=pipeline)
    meter.faults.corrupt_next = 1
    started = utcnow()
    with pytest.raises(ProtocolError, match="corrupt frame"):
        await session.read_registers()
    assert (utcnow() - started).total_seconds() < 2  # recognised, not timed out
    with pytest.raises(ConnectionFailed, match="corrupt frame"):
        await session.read_clock()  # the stream is out of step: nothing after it is trusted


@pytest.mark.parametrize("mode", ["length", "function"])
async def test_corrupt_answer_to_a_pipelined_read_fails_that_step(
    simulator: Serve, connect: Connect, mode: str
) -> None:
    """Identity and profile configuration are read with the login (pipeline 4): a damaged
    answer to one of them fails the steps that asked for them with a ProtocolError, not the
    login; the steps after find the connection closed."""
    meter = SimulatedMeter("MB1", faults=Faults(corrupt_next=0))
    sim = await simulator({1: meter}, corrupt=mode)
    meter.faults.drop_after_requests = None
    original = meter.faults.decide

    def third_answer_damaged(answered: int) -> FaultAction:
        if answered == 2:  # login and level answered; the next is the identity
            meter.faults.corrupt_next = 1
        return original(answered)

    meter.faults.decide = third_answer_damaged  # type: ignore[method-assign]
    session = await connect(sim, timeout=5.0, pipeline=4)
    assert session.level == 1
    with pytest.raises(ProtocolError, match="corrupt frame"):
        await session.identify()
    with pytest.raises(ProtocolError, match="corrupt frame"):
        await session.read_profile_config()
    with pytest.raises(ConnectionFailed, match="corrupt frame"):
        await session.read_clock()


@pytest.mark.parametrize("pipeline", [1, 4])
async def test_requests_in_flight_never_exceed_the_pipeline(
    simulator: Serve, connect: Connect, monkeypatch: pytest.MonkeyPatch, pipeline: int
) -> None:
    """Many devices take one request at a time: with ``pipeline: 1`` the next request waits
    for the answer; with 4, requests go out together (up to 4) and the session takes fewer
    round trips. Counted at the server: requests found together in its receive buffer."""
    import simulators.modbus.server as server

    together: list[int] = []
    original = server._ModbusConnection._next

    def counting(self: Any) -> Any:
        request = original(self)
        if request is not None:
            together.append(1 + len(self.buffer) // 12)  # whole frames behind it, at least
        return request

    monkeypatch.setattr(server._ModbusConnection, "_next", counting)
    meter = SimulatedMeter("MB1", now=fixed_clock(FIXED_NOW))
    sim = await simulator({1: meter})
    session = await connect(sim, pipeline=pipeline)
    await session.identify()
    await session.read_clock()
    await session.read_profile_config()
    await session.read_profile(FIXED_NOW - timedelta(hours=3), FIXED_NOW)
    await session.read_registers()
    assert max(together) <= pipeline
    if pipeline == 1:
        assert (
            len(together) == 8
        )  # login, level, identity, clock, config, selector, window, registers
    else:
        assert max(together) > 1 and len(together) == 8


async def test_pipelined_and_one_at_a_time_read_the_same(
    simulator: Serve, connect: Connect
) -> None:
    meter = SimulatedMeter("MB1", seed=9, now=fixed_clock(FIXED_NOW))
    sim = await simulator({1: meter})
    start = datetime(2026, 3, 9, 20, tzinfo=UTC)
    end = datetime(2026, 3, 10, 12, tzinfo=UTC)
    results = []
    for pipeline in (1, 2, 4, 16):
        session = await connect(sim, pipeline=pipeline)
        assert session.pipeline == pipeline
        results.append(
            (
                await session.identify(),
                (await session.read_clock()).meter_time,
                await session.read_profile_config(),
                await session.read_profile(start, end),
                [(r.channel, r.value) for r in await session.read_registers()],
            )
        )
    assert len(results[0][3]) == 16
    assert all(r == results[0] for r in results[1:])
    with pytest.raises(ValueError, match="pipeline"):
        await connect(sim, pipeline=0)


async def test_unknown_unit_id_behind_gateway_is_a_timeout(
    simulator: Serve, connect: Connect
) -> None:
    sim = await simulator({1: SimulatedMeter("MB1")})
    with pytest.raises(MeterTimeout):
        await connect(sim, device_id=9)


async def test_nothing_listening_is_connection_failed(connect: Connect) -> None:
    sim = await serve({1: SimulatedMeter("MB1")})
    await sim.stop()  # the port is free again
    with pytest.raises(ConnectionFailed):
        await connect(sim)


# --- registers and profile ---------------------------------------------------------------


async def test_registers_match_the_meter(simulator: Serve, connect: Connect) -> None:
    meter = SimulatedMeter("MB1", seed=3)
    session = await connect(await simulator({1: meter}))
    before = meter.registers()
    values = {r.channel: r for r in await session.read_registers()}
    after = meter.registers()
    assert set(values) == set(Channel)
    for ch, reading in values.items():
        assert before[ch] - 0.001 <= reading.value <= after[ch] + 0.001
        assert reading.unit == ch.unit


async def test_register_reset_is_visible(simulator: Serve, connect: Connect) -> None:
    meter = SimulatedMeter("MB1", seed=3, initial_register=500_000.0)
    session = await connect(await simulator({1: meter}))
    first = {r.channel: r.value for r in await session.read_registers()}
    meter.faults.register_reset_at = utcnow() - timedelta(hours=2)
    second = {r.channel: r.value for r in await session.read_registers()}
    assert first[Channel.ACTIVE_IMPORT] > 500_000
    assert 0 < second[Channel.ACTIVE_IMPORT] < 1_000  # two to three hours of ~100 kW


async def test_backup_divergence_is_visible(simulator: Serve, connect: Connect) -> None:
    """Principal and backup on one port (unit ids 1 and 2), same load, backup reads 2% more."""
    now = fixed_clock(FIXED_NOW)
    principal = SimulatedMeter("P1", seed=7, now=now)
    backup = SimulatedMeter("B1", seed=7, now=now, faults=Faults(divergence_pct=2.0))
    sim = await simulator({1: principal, 2: backup})
    p = await connect(sim, device_id=1)
    b = await connect(sim, device_id=2)
    assert (await p.identify()).serial == "P1" and (await b.identify()).serial == "B1"
    end = FIXED_NOW.replace(minute=0, second=0)  # 12:00, the last closed interval ends here
    start = end - timedelta(hours=6)
    pe, be = await p.read_profile(start, end), await b.read_profile(start, end)
    assert [e.start for e in pe] == [e.start for e in be] and len(pe) == 6
    for x, y in zip(pe, be, strict=True):
        ratio = y.values[Channel.ACTIVE_IMPORT] / x.values[Channel.ACTIVE_IMPORT]
        assert ratio == pytest.approx(1.02, abs=0.001)


async def test_profile_across_colombian_midnight_returns_every_hour_in_order(
    simulator: Serve, connect: Connect
) -> None:
    """Local midnight is 05:00 UTC; 14 hours need two windows of 10 records."""
    meter = SimulatedMeter("MB1", seed=5, now=fixed_clock(FIXED_NOW))
    session = await connect(await simulator({1: meter}))
    start = datetime(2026, 3, 9, 20, tzinfo=UTC)  # 15:00 local, 9 March
    end = datetime(2026, 3, 10, 10, tzinfo=UTC)  # 05:00 local, 10 March
    entries = await session.read_profile(start, end)
    assert [e.start for e in entries] == [start + timedelta(hours=h) for h in range(14)]
    assert all(e.period == timedelta(hours=1) for e in entries)
    assert entries == meter.profile(start, end)  # values, status and stamps unchanged


async def test_profile_range_not_on_the_hour_keeps_only_starts_inside(
    simulator: Serve, connect: Connect
) -> None:
    meter = SimulatedMeter("MB1", now=fixed_clock(FIXED_NOW))
    session = await connect(await simulator({1: meter}))
    start = datetime(2026, 3, 10, 1, 30, tzinfo=UTC)
    entries = await session.read_profile(start, start + timedelta(hours=2))
    assert [e.start.hour for e in entries] == [2, 3]


async def test_missing_profile_entries_are_absent_not_zero(
    simulator: Serve, connect: Connect
) -> None:
    hole = (datetime(2026, 3, 10, 3, tzinfo=UTC), datetime(2026, 3, 10, 6, tzinfo=UTC))
    meter = SimulatedMeter("MB1", now=fixed_clock(FIXED_NOW), faults=Faults(missing=[hole]))
    session = await connect(await simulator({1: meter}))
    start = datetime(2026, 3, 10, 0, tzinfo=UTC)
    entries = await session.read_profile(start, start + timedelta(hours=9))
    assert [e.start.hour for e in entries] == [0, 1, 2, 6, 7, 8]
    assert all(e.values[Channel.ACTIVE_IMPORT] > 0 for e in entries)


async def test_profile_beyond_memory_and_in_the_future_is_empty(
    simulator: Serve, connect: Connect
) -> None:
    meter = SimulatedMeter("MB1", now=fixed_clock(FIXED_NOW), depth=48)
    session = await connect(await simulator({1: meter}))
    assert await session.read_profile(FIXED_NOW, FIXED_NOW + timedelta(days=1)) == []
    old = FIXED_NOW - timedelta(days=10)
    assert await session.read_profile(old, old + timedelta(hours=5)) == []
    entries = await session.read_profile(FIXED_NOW - timedelta(days=3), FIXED_NOW)
    assert len(entries) == 48  # the whole memory, no more


async def test_clock_adjustment_is_flagged_in_the_profile(
    simulator: Serve, connect: Connect
) -> None:
    clock = {"now": FIXED_NOW}
    meter = SimulatedMeter("MB1", clock_offset=45, now=lambda: clock["now"])
    session = await connect(await simulator({1: meter}), LEVEL2)
    await session.set_clock(FIXED_NOW)  # adjusted during the 12:00 UTC interval
    clock["now"] = FIXED_NOW + timedelta(hours=1)  # that interval has closed
    start = datetime(2026, 3, 10, 10, tzinfo=UTC)
    entries = await session.read_profile(start, start + timedelta(hours=3))
    assert [e.status & EntryStatus.CLOCK_ADJUSTED for e in entries] == [0, 0, 0x20]


async def test_profile_config(simulator: Serve, connect: Connect) -> None:
    meter = SimulatedMeter("MB1", capture_period=timedelta(minutes=15), depth=2880)
    session = await connect(await simulator({1: meter}))
    config = await session.read_profile_config()
    assert config.capture_period == timedelta(minutes=15)
    assert config.depth == 2880 and config.channels == tuple(Channel)
    assert config.memory_span == timedelta(days=30)


async def test_no_profile_map_reads_registers_and_clock_but_not_a_profile(
    simulator: Serve, connect: Connect
) -> None:
    meter = SimulatedMeter("MB1", clock_offset=-30)
    session = await connect(await simulator({1: meter}, map="sim-basic"), map="sim-basic")
    with pytest.raises(NotSupported):
        await session.read_profile(FIXED_NOW - timedelta(hours=2), FIXED_NOW)
    with pytest.raises(NotSupported):
        await session.read_profile_config()
    assert -31.1 <= (await session.read_clock()).offset <= -29.9
    registers = {r.channel: r.value for r in await session.read_registers()}
    assert registers[Channel.ACTIVE_IMPORT] == pytest.approx(
        meter.registers()[Channel.ACTIVE_IMPORT], abs=0.02
    )
    assert (await session.identify()).model == "SIM-BASIC"


async def test_word_order_parameter_overrides_the_map(simulator: Serve, connect: Connect) -> None:
    """A meter configured low-word-first read with the map's high-word-first default."""
    meter = SimulatedMeter("MB1", initial_register=70_000.0, mean_kw=0)
    sim = await simulator({1: meter}, map="sim-basic")  # serves little-endian words
    wrong = await connect(sim, map="sim-basic", word_order="big")
    right = await connect(sim, map="sim-basic", word_order="little")
    assert (await right.read_registers())[0].value == 70_000.0
    assert (await wrong.read_registers())[0].value != 70_000.0


# --- maps --------------------------------------------------------------------------------


def bad_map_cases() -> list[Any]:
    return [pytest.param(p, id=p.stem) for p in sorted((CASES / "bad_maps").glob("*.yaml"))]


@pytest.mark.parametrize("path", bad_map_cases())
def test_bad_map_gives_a_clear_error(path: Path) -> None:
    expected = path.read_text(encoding="utf-8").splitlines()[0].removeprefix("# expect: ")
    with pytest.raises(MapError) as info:
        load_map(path)
    message = str(info.value)
    assert message.startswith(str(path)), message  # names the file
    assert expected in message, message  # and the field


async def test_bad_map_is_refused_at_connect(simulator: Serve, connect: Connect) -> None:
    sim = await simulator({1: SimulatedMeter("MB1")})
    with pytest.raises(MapError, match="unknown-type.yaml"):
        await connect(sim, map=str(CASES / "bad_maps" / "unknown-type.yaml"))
    with pytest.raises(MapError, match="not found.*sim-4q"):
        await connect(sim, map="no-such-model")


def test_shipped_maps_load() -> None:
    assert load_map("sim-4q").profile is not None
    assert load_map("SIM-BASIC").profile is None


def read_cases() -> list[Any]:
    return [pytest.param(p, id=p.name) for p in sorted((CASES / "read").iterdir()) if p.is_dir()]


@pytest.mark.parametrize("case", read_cases())
async def test_read_case(simulator: Serve, connect: Connect, case: Path) -> None:
    """Telegraf style: serve ``map.yaml`` from the meter in ``expected.yaml``, compare."""
    spec = yaml.safe_load((case / "expected.yaml").read_text(encoding="utf-8"))
    meter = SimulatedMeter(**{"mean_kw": 0, **spec["meter"]}, now=fixed_clock(spec["now"]))
    map_file = str(case / "map.yaml")
    session = await connect(await simulator({1: meter}, map=map_file), map=map_file)
    expect = spec["expect"]
    assert (await session.identify()).__dict__ == expect["identity"]
    assert (await session.read_clock()).meter_time == expect["clock"]
    registers = {r.channel.value: r.value for r in await session.read_registers()}
    assert registers == expect["registers"]


async def test_profile_skips_a_hole_longer_than_the_window(
    simulator: Serve, connect: Connect
) -> None:
    hole = (datetime(2026, 3, 7, 2, tzinfo=UTC), datetime(2026, 3, 9, 4, tzinfo=UTC))
    meter = SimulatedMeter("MB1", now=fixed_clock(FIXED_NOW), faults=Faults(missing=[hole]))
    session = await connect(await simulator({1: meter}))
    start = datetime(2026, 3, 7, 0, tzinfo=UTC)
    entries = await session.read_profile(start, datetime(2026, 3, 9, 6, tzinfo=UTC))
    assert [e.start for e in entries] == [
        start,
        start + timedelta(hours=1),
        datetime(2026, 3, 9, 4, tzinfo=UTC),
        datetime(2026, 3, 9, 5, tzinfo=UTC),
    ]


# --- real maps, byte orders, simulator independence ---------------------------------------


async def test_simulator_serves_a_real_map_without_login_or_clock(
    simulator: Serve, connect: Connect
) -> None:
    meter = SimulatedMeter("3000000001", initial_register=1234.567, mean_kw=0, model="iEM3255")
    sim = await simulator({1: meter}, map="schneider-iem3000")
    session = await connect(sim, Credentials(AccessLevel.READ, "anything"), map="schneider-iem3000")
    identity = await session.identify()
    assert (identity.serial, identity.model) == ("3000000001", "iEM3255")
    assert {r.channel: r.value for r in await session.read_registers()}[
        Channel.ACTIVE_IMPORT
    ] == pytest.approx(1234.567, abs=0.0015)
    with pytest.raises(NotSupported, match="no clock"):
        await session.read_clock()
    with pytest.raises(NotSupported):
        await session.read_profile(FIXED_NOW - timedelta(hours=2), FIXED_NOW)


async def test_byte_order_parameter_overrides_the_map(simulator: Serve, connect: Connect) -> None:
    meter = SimulatedMeter("MB1", initial_register=70_000.0, mean_kw=0)
    sim = await simulator({1: meter}, map="sim-basic")  # CDAB: low word first
    right = await connect(sim, map="sim-basic", byte_order="CDAB")
    wrong = await connect(sim, map="sim-basic", byte_order="BADC")
    assert (await right.read_registers())[0].value == 70_000.0
    assert (await wrong.read_registers())[0].value != 70_000.0
    with pytest.raises(ValueError, match="not one of ABCD"):
        await connect(sim, map="sim-basic", byte_order="big-endian")
    with pytest.raises(ValueError, match="not both"):
        await connect(sim, map="sim-basic", byte_order="ABCD", word_order="big")


def test_simulator_does_not_import_the_driver_register_map_code() -> None:
    """Sharing the codec would hide one mistake on both sides (simulators/modbus/image.py)."""
    root = Path(__file__).parents[2] / "simulators"
    for path in [*root.glob("modbus/*.py"), root / "meter.py", root / "fleet.py"]:
        text = path.read_text(encoding="utf-8")
        assert "drivers.modbus" not in text, path


async def test_register_max_is_accepted_for_the_cgm_and_checked(
    simulator: Serve, connect: Connect
) -> None:
    sim = await simulator({1: SimulatedMeter("MB1")}, map="sim-basic")
    session = await connect(
        sim, map="sim-basic", register_max=42_949_672.96, max_current_a=10, nominal_voltage_v=120
    )
    assert (await session.read_registers())[0].value > 0
    with pytest.raises(ValueError, match="register_max"):
        await connect(sim, map="sim-basic", register_max=-1)


# --- cumulative-register profiles --------------------------------------------------------


async def test_cumulative_profile_is_differenced_into_the_meters_own_intervals(
    simulator: Serve, connect: Connect
) -> None:
    meter = SimulatedMeter("MB1", now=fixed_clock(FIXED_NOW))
    session = await connect(await simulator({1: meter}, map="sim-cumulative"), map="sim-cumulative")
    start, end = datetime(2026, 3, 9, 3, tzinfo=UTC), datetime(2026, 3, 10, 3, tzinfo=UTC)
    entries = await session.read_profile(start, end)
    truth = meter.profile(start, end)
    assert [e.start for e in entries] == [e.start for e in truth]  # the first one included
    for got, want in zip(entries, truth, strict=True):
        for ch in Channel:
            assert got.values[ch] == pytest.approx(want.values[ch], abs=1e-6)
        assert max(got.values.values()) < 1_000  # an hour's energy, never the register
    assert not session.events


async def test_cumulative_profile_after_a_hole_does_not_invent_the_first_interval(
    simulator: Serve, connect: Connect
) -> None:
    hole = (datetime(2026, 3, 9, 5, tzinfo=UTC), datetime(2026, 3, 9, 7, tzinfo=UTC))
    meter = SimulatedMeter("MB1", now=fixed_clock(FIXED_NOW), faults=Faults(missing=[hole]))
    session = await connect(await simulator({1: meter}, map="sim-cumulative"), map="sim-cumulative")
    start = datetime(2026, 3, 9, 3, tzinfo=UTC)
    entries = await session.read_profile(start, start + timedelta(hours=8))
    hours = [e.start.hour for e in entries]
    # 05:00 and 06:00 are missing; 07:00 closes at 08:00 but has no reading at 07:00 to open it.
    assert hours == [3, 4, 8, 9, 10]
    assert any(e.kind == "gap" for e in session.events)


async def test_cumulative_profile_across_a_counter_rollover_is_correct_and_flagged(
    simulator: Serve, connect: Connect
) -> None:
    top = 4_294_967.296  # uint32 at 1 Wh
    meter = SimulatedMeter("MB1", now=fixed_clock(FIXED_NOW), initial_register=0.0)
    start = datetime(2026, 3, 9, 3, tzinfo=UTC)
    (before,) = meter.register_values([start])[Channel.ACTIVE_IMPORT]
    meter.initial_register = top - (before - 0.0) - 250.0  # wraps a couple of hours in
    session = await connect(await simulator({1: meter}, map="sim-cumulative"), map="sim-cumulative")
    entries = await session.read_profile(start, start + timedelta(hours=6))
    truth = meter.profile(start, start + timedelta(hours=6))
    assert len(entries) == 6
    for got, want in zip(entries, truth, strict=True):
        assert got.values[Channel.ACTIVE_IMPORT] == pytest.approx(
            want.values[Channel.ACTIVE_IMPORT], abs=1e-6
        )
    assert sum(Channel.ACTIVE_IMPORT in e.rollover for e in entries) == 1
    assert [e.kind for e in session.events] == ["rollover"]


async def test_cumulative_profile_of_a_replaced_meter_starts_from_its_own_memory(
    simulator: Serve, connect: Connect
) -> None:
    """A meter replaced at 06:30 (registers from zero, memory from then): nothing before
    its first capture is invented, and no interval is ever negative or a register value."""
    reset = datetime(2026, 3, 9, 6, 30, tzinfo=UTC)
    meter = SimulatedMeter(
        "MB1", now=fixed_clock(FIXED_NOW), faults=Faults(register_reset_at=reset)
    )
    session = await connect(await simulator({1: meter}, map="sim-cumulative"), map="sim-cumulative")
    start = datetime(2026, 3, 9, 3, tzinfo=UTC)
    entries = await session.read_profile(start, start + timedelta(hours=8))
    truth = {e.start: e for e in meter.profile(start, start + timedelta(hours=8))}
    assert [e.start.hour for e in entries] == [7, 8, 9, 10]  # the 07:00 capture only opens
    for e in entries:
        assert e.values[Channel.ACTIVE_IMPORT] == pytest.approx(
            truth[e.start].values[Channel.ACTIVE_IMPORT], abs=1e-6
        )
