"""DLMS/COSEM driver against the DLMS simulator over real sockets on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

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
from drivers.dlms import DRIVER, DlmsDriver, DlmsSession, cosem
from simulators.dlms import DlmsServer, DlmsVariant, serve
from simulators.meter import Faults, SimulatedMeter
from tests.fixtures.gurux_client import gurux_link

HOUR = timedelta(hours=1)
LEVEL1 = Credentials(AccessLevel.READ, "reader-1")
LEVEL2 = Credentials(AccessLevel.CONFIGURE, "config-2")


def floor_hour(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


@pytest.fixture
async def meter() -> SimulatedMeter:
    return SimulatedMeter("DLMS-0001", seed=7, manufacturer="ACME", model="A4Q", firmware="2.3.1")


@pytest.fixture
async def server(meter: SimulatedMeter) -> AsyncIterator[DlmsServer]:
    srv = await serve({1: meter}, "127.0.0.1", 0)
    try:
        yield srv
    finally:
        await srv.stop()


def endpoint(srv: DlmsServer) -> Endpoint:
    return Endpoint("127.0.0.1", srv.port)


async def connect(
    srv: DlmsServer, creds: Credentials = LEVEL1, timeout: float = 5.0, **params: object
) -> DlmsSession:
    return await DRIVER.connect(endpoint(srv), creds, params or None, timeout=timeout)


# --- identity, clock ----------------------------------------------------------------------


async def test_identity(server: DlmsServer) -> None:
    async with await connect(server) as session:
        identity = await session.identify()
    assert (identity.serial, identity.manufacturer, identity.model, identity.firmware) == (
        "DLMS-0001",
        "ACME",
        "A4Q",
        "2.3.1",
    )


async def test_clock_offset_is_measured_in_utc() -> None:
    meter = SimulatedMeter("CLK", clock_offset=45.0)
    async with await serve(meter) as srv, await connect(srv) as session:
        reading = await session.read_clock()
    assert reading.meter_time.utcoffset() == timedelta(0)
    assert reading.offset == pytest.approx(45.0, abs=1.0)
    assert reading.status == 0


def test_datetime_codec_uses_blue_book_deviation_sign() -> None:
    # Colombia (UTC−5): local + deviation = UTC, so the deviation is +300 minutes.
    when = datetime(2026, 3, 1, 4, 30, tzinfo=UTC)
    raw = cosem.encode_datetime(when)
    assert raw[5] == 23 and raw[3] == 28  # 23:30 on 28 February, local time
    assert int.from_bytes(raw[9:11], "big", signed=True) == 300
    assert cosem.decode_datetime(raw) == (when, 0)
    unspecified = raw[:9] + b"\x80\x00" + raw[11:]
    assert cosem.decode_datetime(unspecified)[0] == when  # default: Colombian local time
    utc = cosem.decode_datetime(unspecified, default_tz=UTC)[0]
    assert utc == when - timedelta(hours=5)


async def test_timezone_param_applies_when_deviation_unspecified(
    server: DlmsServer, meter: SimulatedMeter, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unspecified(when: datetime, tz: object = None, status: int = 0) -> bytes:
        # A meter that sends Colombian wall-clock time with deviation 0x8000.
        return _local_bytes(when.astimezone(cosem.COLOMBIA)) + b"\x80\x00\x00"

    import simulators.dlms.server as sim

    monkeypatch.setattr(sim.ob, "encode_datetime", unspecified)
    async with await connect(server) as session:
        colombian = await session.read_clock()
    async with await connect(server, timezone="+00:00") as session:
        as_utc = await session.read_clock()
    assert colombian.offset == pytest.approx(0.0, abs=1.0)
    assert as_utc.offset == pytest.approx(-5 * 3600, abs=1.0)


def _local_bytes(local: datetime) -> bytes:
    return local.year.to_bytes(2, "big") + bytes(
        [local.month, local.day, 0xFF, local.hour, local.minute, local.second, 0]
    )


async def test_set_clock_level2_then_reread(server: DlmsServer, meter: SimulatedMeter) -> None:
    meter.set_clock(meter.real_now() + timedelta(seconds=120))
    meter.clock_adjustments.clear()
    async with await connect(server, LEVEL2) as session:
        assert (await session.read_clock()).offset == pytest.approx(120, abs=1.0)
        await session.set_clock(datetime.now(UTC))
        after = await session.read_clock()
    assert after.offset == pytest.approx(0.0, abs=1.0)
    assert len(meter.clock_adjustments) == 1
    assert meter.clock_adjustments[0][1] == pytest.approx(-120, abs=1.0)


async def test_set_clock_level1_is_access_denied(server: DlmsServer, meter: SimulatedMeter) -> None:
    async with await connect(server, LEVEL1) as session:
        with pytest.raises(AccessDenied):
            await session.set_clock(datetime.now(UTC) + timedelta(hours=1))
        assert (await session.read_clock()).offset == pytest.approx(0.0, abs=1.0)
    assert meter.clock_adjustments == []


@pytest.mark.parametrize(
    "creds",
    [
        Credentials(AccessLevel.READ, "wrong"),
        Credentials(AccessLevel.CONFIGURE, "reader-1"),  # level-1 secret on the level-2 SAP
        Credentials(AccessLevel.READ, "config-2", client="0x20"),
    ],
)
async def test_wrong_secret_is_authentication_failed(
    server: DlmsServer, creds: Credentials
) -> None:
    with pytest.raises(AuthenticationFailed):
        await connect(server, creds)
    assert server.stats.rejected == 1 and server.stats.associations == 0


async def test_changed_password_is_taken_and_the_old_one_refused(
    server: DlmsServer, meter: SimulatedMeter
) -> None:
    """The LLS association request is encoded once per secret: a new password on the
    meter must refuse the old one at the next session, and the new one must work."""
    async with await connect(server, LEVEL1) as session:
        assert (await session.identify()).serial == "DLMS-0001"
    meter.secrets = replace(meter.secrets, level1="reader-new")
    with pytest.raises(AuthenticationFailed):
        await connect(server, LEVEL1)
    async with await connect(server, Credentials(AccessLevel.READ, "reader-new")) as session:
        assert (await session.identify()).serial == "DLMS-0001"
    with pytest.raises(AuthenticationFailed):
        await connect(server, LEVEL1)
    assert server.stats.associations == 2 and server.stats.rejected == 2


# --- faults ---------------------------------------------------------------------------------


async def test_latency_beyond_timeout_is_meter_timeout(
    server: DlmsServer, meter: SimulatedMeter
) -> None:
    session = await connect(server, timeout=0.3)
    try:
        meter.faults.latency = 1.0
        with pytest.raises(MeterTimeout):
            await session.read_clock()
        with pytest.raises(ConnectionFailed):  # the association is out of step now
            await session.read_clock()
    finally:
        await session.close()
    with pytest.raises(MeterTimeout):
        await connect(server, timeout=0.3)


async def test_silent_meter_is_meter_timeout(server: DlmsServer, meter: SimulatedMeter) -> None:
    meter.faults.no_answer = True
    with pytest.raises(MeterTimeout):
        await connect(server, timeout=0.3)


async def test_dropped_mid_session_is_connection_failed(
    server: DlmsServer, meter: SimulatedMeter
) -> None:
    meter.faults.drop_after_requests = 2  # AARE and one GET answered, then the link drops
    async with await connect(server) as session:
        await session.identify()  # one GET-with-list: the last answer before the drop
        with pytest.raises(ConnectionFailed):
            await session.read_clock()


async def test_corrupt_frame_is_protocol_error(server: DlmsServer, meter: SimulatedMeter) -> None:
    async with await connect(server) as session:
        meter.faults.corrupt_next = 1
        with pytest.raises(ProtocolError):
            await session.read_clock()


async def test_refused_connection_is_connection_failed(server: DlmsServer) -> None:
    port = server.port
    await server.stop()
    with pytest.raises(ConnectionFailed):
        await DRIVER.connect(Endpoint("127.0.0.1", port), LEVEL1, timeout=2)


# --- profile and registers ------------------------------------------------------------------


async def test_profile_config(server: DlmsServer) -> None:
    async with await connect(server) as session:
        config = await session.read_profile_config()
    assert config.capture_period == HOUR
    assert config.depth >= 720
    assert set(config.channels) == set(ALL_CHANNELS)


async def test_profile_across_colombian_midnight(server: DlmsServer, meter: SimulatedMeter) -> None:
    # Colombian midnight is 05:00 UTC; read 02:00–09:00 UTC of yesterday.
    day = floor_hour(datetime.now(UTC)).replace(hour=0) - timedelta(days=1)
    start, end = day + 2 * HOUR, day + 9 * HOUR
    async with await connect(server) as session:
        entries = await session.read_profile(start, end)
    assert [e.start for e in entries] == [start + i * HOUR for i in range(7)]
    assert day + 5 * HOUR in {e.start for e in entries}
    expected = meter.profile(start, end)
    for got, want in zip(entries, expected, strict=True):
        assert got.period == HOUR
        assert got.values == pytest.approx(want.values)
        assert got.start.tzinfo is not None and got.start.utcoffset() == timedelta(0)


async def test_missing_entries_are_absent_not_zero(
    server: DlmsServer, meter: SimulatedMeter
) -> None:
    base = floor_hour(datetime.now(UTC)) - 10 * HOUR
    meter.faults.missing = [(base + 3 * HOUR, base + 5 * HOUR)]
    async with await connect(server) as session:
        entries = await session.read_profile(base, base + 8 * HOUR)
    starts = [e.start for e in entries]
    assert starts == [base + i * HOUR for i in (0, 1, 2, 5, 6, 7)]
    assert all(e.values[Channel.ACTIVE_IMPORT] > 0 for e in entries)


async def test_register_reset_is_visible(server: DlmsServer, meter: SimulatedMeter) -> None:
    async with await connect(server) as session:
        before = {r.channel: r.value for r in await session.read_registers()}
        meter.faults.register_reset_at = floor_hour(datetime.now(UTC)) - 2 * HOUR
        after = {r.channel: r.value for r in await session.read_registers()}
    units = {r.channel: r.unit for r in await _registers(server)}
    assert units[Channel.ACTIVE_IMPORT] == "kWh" and units[Channel.REACTIVE_IMPORT] == "kvarh"
    assert before[Channel.ACTIVE_IMPORT] > 10_000
    assert 0 < after[Channel.ACTIVE_IMPORT] < 3 * 3 * meter.mean_kw
    assert after[Channel.ACTIVE_IMPORT] == pytest.approx(
        meter.registers()[Channel.ACTIVE_IMPORT], abs=0.01
    )


async def _registers(srv: DlmsServer) -> list:
    async with await connect(srv) as session:
        return await session.read_registers()


async def test_backup_divergence_is_visible() -> None:
    principal = SimulatedMeter("P-1", seed=11)
    backup = SimulatedMeter("B-1", seed=11, faults=Faults(divergence_pct=2.0))
    day = floor_hour(datetime.now(UTC)) - 24 * HOUR
    async with await serve({1: principal, 2: backup}) as srv:
        async with await connect(srv) as session:
            p = await session.read_profile(day, day + 6 * HOUR)
        async with await connect(srv, server_address=2) as session:
            assert (await session.identify()).serial == "B-1"
            b = await session.read_profile(day, day + 6 * HOUR)
    assert [e.start for e in p] == [e.start for e in b] and len(p) == 6
    for pe, be in zip(p, b, strict=True):
        ratio = be.values[Channel.ACTIVE_IMPORT] / pe.values[Channel.ACTIVE_IMPORT]
        assert ratio == pytest.approx(1.02, abs=2e-4)


async def test_thirty_days_needs_block_transfer(server: DlmsServer, meter: SimulatedMeter) -> None:
    end = floor_hour(datetime.now(UTC))
    start = end - 720 * HOUR
    async with await connect(server) as session:
        entries = await session.read_profile(start, end)
        blocks = session.blocks_received
        assert session.negotiated_pdu_size == 1024
    assert len(entries) == 720
    assert [e.start for e in entries] == [start + i * HOUR for i in range(720)]
    assert blocks > 1 and blocks == server.stats.blocks_sent
    want = meter.profile(start, end)
    assert len(want) == 720
    for got, expected in zip(entries, want, strict=True):
        assert got.values == pytest.approx(expected.values)


async def test_client_pdu_limit_forces_blocks(meter: SimulatedMeter) -> None:
    async with await serve(meter, max_pdu_size=0xFFFF) as srv:
        async with await connect(srv, max_pdu_size=256) as session:
            end = floor_hour(datetime.now(UTC))
            entries = await session.read_profile(end - 48 * HOUR, end)
            assert len(entries) == 48 and session.blocks_received > 5


def test_units_are_checked() -> None:
    assert cosem.to_kilo(123_456, 0, cosem.UNIT_WH, Channel.ACTIVE_IMPORT) == 123.456
    assert cosem.to_kilo(12, 2, cosem.UNIT_VARH, Channel.REACTIVE_EXPORT) == 1.2
    with pytest.raises(ValueError):
        cosem.to_kilo(1, 0, cosem.UNIT_VARH, Channel.ACTIVE_IMPORT)


# --- interoperability: Gurux's DLMS client against the simulator ---------------------------


def _gurux_client(password: str) -> object:
    from gurux_dlms import GXDLMSClient
    from gurux_dlms.enums import Authentication, InterfaceType

    return GXDLMSClient(
        True, cosem.READING_CLIENT, 1, Authentication.LOW, password, InterfaceType.WRAPPER
    )


def _gurux_reads(port: int) -> dict[str, object]:
    from gurux_dlms.objects import (
        GXDLMSClock,
        GXDLMSData,
        GXDLMSProfileGeneric,
        GXDLMSRegister,
    )

    client = _gurux_client("reader-1")
    with gurux_link(port, client) as link:
        exchange = link.exchange
        link.associate()
        out: dict[str, object] = {"pdu": client.maxReceivePDUSize}
        clock = GXDLMSClock("0.0.1.0.0.255")
        client.updateValue(clock, 2, exchange(client.read(clock, 2)).value)
        out["clock"] = clock.time.value
        serial = GXDLMSData("0.0.96.1.0.255")
        client.updateValue(serial, 2, exchange(client.read(serial, 2)).value)
        out["serial"] = bytes(serial.value).decode()
        register = GXDLMSRegister("1.0.1.8.0.255")
        for attribute in (3, 2):
            client.updateValue(
                register, attribute, exchange(client.read(register, attribute)).value
            )
        out["register"] = (register.value, register.scaler, register.unit)
        profile = GXDLMSProfileGeneric("1.0.99.1.0.255")
        for attribute in (3, 4):
            client.updateValue(profile, attribute, exchange(client.read(profile, attribute)).value)
        out["columns"] = [str(o[0].logicalName) for o in profile.captureObjects]
        out["period"] = profile.capturePeriod
        end = floor_hour(datetime.now(UTC))
        rows = exchange(client.readRowsByRange(profile, end - 72 * HOUR, end)).value
        client.updateValue(profile, 2, rows)
        out["rows"] = [(row[0].value, row[1]) for row in profile.buffer]
        exchange(client.releaseRequest())
        return out


async def test_gurux_client_reads_the_simulator(server: DlmsServer, meter: SimulatedMeter) -> None:
    import asyncio

    got = await asyncio.to_thread(_gurux_reads, server.port)
    assert got["pdu"] == 1024
    # Gurux applies the Blue Book deviation sign: the meter's +300 must read as UTC−5.
    assert abs((got["clock"] - datetime.now(UTC)).total_seconds()) < 2
    assert got["clock"].utcoffset() == timedelta(hours=-5)
    assert got["serial"] == "DLMS-0001"
    value, scaler, unit = got["register"]
    assert unit == cosem.UNIT_WH and scaler == 1  # Gurux reports 10**scaler
    assert value / 1000 == pytest.approx(meter.registers()[Channel.ACTIVE_IMPORT], abs=1.0)
    assert got["columns"][0] == "0.0.1.0.0.255" and "1.0.1.29.0.255" in got["columns"]
    assert got["period"] == 3600
    rows = got["rows"]
    assert len(rows) >= 71 and server.stats.blocks_sent > 1
    stamps = [r[0] for r in rows]
    assert all(b - a == HOUR for a, b in zip(stamps, stamps[1:], strict=False))
    first = meter.profile(stamps[0] - HOUR, stamps[0])[0]
    assert rows[0][1] == round(first.values[Channel.ACTIVE_IMPORT] * 1000)


async def test_gurux_client_wrong_password_is_refused(server: DlmsServer) -> None:
    import asyncio

    def attempt() -> None:
        with gurux_link(server.port, _gurux_client("nope")) as link:
            link.associate()

    with pytest.raises(Exception, match="(?i)auth|denied|password|reject"):
        await asyncio.to_thread(attempt)
    assert server.stats.rejected == 1


# --- round trips: GET-with-list and column hints ------------------------------------------


async def _hourly_session(
    srv: DlmsServer, driver: DlmsDriver | None = None, **params: object
) -> tuple[DlmsSession, dict]:
    """The collector's steady-state sequence; the session's APDU count before release."""
    opened = (driver or DRIVER).connect(endpoint(srv), LEVEL1, params or None, timeout=5.0)
    async with await opened as session:
        end = floor_hour(datetime.now(UTC))
        out = {
            "identity": await session.identify(),
            "clock": await session.read_clock(),
            "config": await session.read_profile_config(),
            "entries": await session.read_profile(end - HOUR, end),
            "registers": await session.read_registers(),
            "requests": session.requests_sent,
        }
    return session, out


async def test_hourly_session_takes_six_round_trips(server: DlmsServer) -> None:
    driver = DlmsDriver()  # knows no layout yet
    _, first = await _hourly_session(server, driver)
    _, second = await _hourly_session(server, driver)
    # AARQ, identity (list), clock, profile config (list), profile, registers (list); the
    # first contact also reads the scalers of the columns it has just learned.
    assert first["requests"] == 7 and second["requests"] == 6
    assert first["config"] == second["config"]
    assert len(second["entries"]) == 1 and len(second["registers"]) == 4


async def test_replaced_meter_does_not_inherit_the_column_hint(
    server: DlmsServer, meter: SimulatedMeter
) -> None:
    driver = DlmsDriver()
    await _hourly_session(server, driver)
    server.meters[1] = SimulatedMeter("DLMS-0099", seed=8)  # same address, another meter
    _, out = await _hourly_session(server, driver)
    assert out["identity"].serial == "DLMS-0099"
    # No hint for this serial: the layout last read (the same model's) is offered and
    # checked against the columns read in the same list, so no round trip is added.
    assert out["requests"] == 6
    assert {r.channel for r in out["registers"]} == set(ALL_CHANNELS)


async def test_another_models_layout_is_checked_not_trusted() -> None:
    """A meter of another model is offered the layout last read from any meter: its own
    columns, read in the same list, show the offer wrong, and its scalers are read."""
    driver = DlmsDriver()
    first = SimulatedMeter("DLMS-0100", seed=9)
    other = SimulatedMeter("DLMS-0101", seed=10)
    cumulative = DlmsVariant(profile="cumulative", status_column=False)
    async with await serve(first) as plain, await serve(other, variant=cumulative) as srv:
        _, a = await _hourly_session(plain, driver)
        _, b = await _hourly_session(srv, driver)
        _, c = await _hourly_session(srv, driver)
    assert a["requests"] == 7 and b["requests"] == 7 and c["requests"] == 6
    assert {col.use for col in b["config"].columns} == {"clock", "cumulative"}
    end = floor_hour(datetime.now(UTC))
    truth = other.profile(end - HOUR, end)
    assert len(b["entries"]) == 1 and b["entries"][0].start == truth[0].start
    assert b["entries"][0].values == pytest.approx(truth[0].values, abs=1e-3)


async def test_changed_scaler_applies_in_the_next_session(
    server: DlmsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dlms_cosem import dlms_data

    from simulators.dlms import server as sim

    _, before = await _hourly_session(server)
    # The meter is reprogrammed to count in 10 Wh steps: its raw numbers are unchanged here,
    # so every value must come out ten times larger at once — no scaler is ever cached.
    tens = dlms_data.DataStructure(
        [dlms_data.IntegerData(1), dlms_data.EnumData(cosem.UNIT_WH)]
    ).to_bytes()
    real = sim.ob.scaler_unit

    def reprogrammed(scaler: int, unit: int) -> bytes:
        return tens if unit == cosem.UNIT_WH else real(scaler, unit)

    monkeypatch.setattr(sim.ob, "scaler_unit", reprogrammed)
    _, after = await _hourly_session(server)
    assert after["requests"] == 6  # the columns did not change: the hint held

    def active(out: dict) -> tuple[float, float]:
        (register,) = [r for r in out["registers"] if r.channel == Channel.ACTIVE_IMPORT]
        return register.value, out["entries"][0].values[Channel.ACTIVE_IMPORT]

    assert active(after)[1] == pytest.approx(10 * active(before)[1])
    assert active(after)[0] == pytest.approx(10 * active(before)[0], rel=1e-3)


async def test_meter_without_get_with_list(
    server: DlmsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import attr

    from simulators.dlms import server as sim

    _, listed = await _hourly_session(server)
    monkeypatch.setattr(sim, "SUPPORTED", attr.evolve(sim.SUPPORTED, multiple_references=False))
    _, single = await _hourly_session(server)
    assert single["identity"] == listed["identity"]
    assert single["config"] == listed["config"]
    assert [r.channel for r in single["registers"]] == [r.channel for r in listed["registers"]]
    assert single["requests"] > listed["requests"]


async def test_get_with_list_answer_in_blocks(meter: SimulatedMeter) -> None:
    async with await serve(meter, max_pdu_size=0xFFFF) as srv:
        session, out = await _hourly_session(srv, max_pdu_size=100)
    assert out["identity"].serial == "DLMS-0001"
    assert set(out["config"].channels) == set(ALL_CHANNELS)
    assert len(out["registers"]) == 4 and session.blocks_received >= 2  # the config list
