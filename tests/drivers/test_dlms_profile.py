"""DLMS profile layouts, identity, GET-with-list fallback and bounded blocks, over real sockets.

The simulator encodes its objects from its own Blue Book table (``simulators/dlms/objects.py``),
not from the driver's, and offers the layouts met in the field (:class:`DlmsVariant`).
"""

from __future__ import annotations

import tracemalloc
from datetime import UTC, datetime, timedelta

import pytest

from drivers.base import (
    ALL_CHANNELS,
    AccessLevel,
    Channel,
    Credentials,
    Endpoint,
    EntryStatus,
    NotSupported,
    ProtocolError,
)
from drivers.dlms import DlmsDriver, DlmsSession
from simulators.dlms import DlmsServer, DlmsVariant, serve
from simulators.meter import SimulatedMeter

HOUR = timedelta(hours=1)
QUARTER = timedelta(minutes=15)
LEVEL1 = Credentials(AccessLevel.READ, "reader-1")


def floor_hour(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


async def connect(srv: DlmsServer, **params: object) -> DlmsSession:
    # A fresh driver per test: the list-fallback memory is per driver.
    return await DlmsDriver().connect(
        Endpoint("127.0.0.1", srv.port), LEVEL1, params or None, timeout=5.0
    )


def expected(meter: SimulatedMeter, start: datetime, end: datetime) -> dict:
    return {e.start: e.values for e in meter.profile(start, end)}


def assert_same(entries: list, truth: dict) -> None:
    assert [e.start for e in entries] == sorted(truth)
    for e in entries:
        assert e.values == pytest.approx(truth[e.start], abs=1e-9)


@pytest.mark.parametrize(
    ("variant", "period"),
    [
        (DlmsVariant(profile="cumulative"), HOUR),
        (DlmsVariant(profile="cumulative", status_column=False), QUARTER),
        (DlmsVariant(profile="cumulative", tariffs=2, extra_columns=True), HOUR),
        (DlmsVariant(profile="interval", extra_columns=True), QUARTER),
        (DlmsVariant(profile="interval", status_column=False), HOUR),
    ],
    ids=["cumulative", "cumulative-15min-no-status", "tariffs+demand", "interval-15min", "plain"],
)
async def test_every_layout_gives_the_meters_interval_energy(
    variant: DlmsVariant, period: timedelta
) -> None:
    meter = SimulatedMeter("LAYOUT-1", seed=3, capture_period=period, depth=96 * 35)
    end = floor_hour(meter.real_now())
    start = end - 6 * HOUR
    async with await serve(meter, variant=variant) as srv, await connect(srv) as session:
        config = await session.read_profile_config()
        entries = await session.read_profile(start, end)
    assert config.capture_period == period
    assert config.channels == ALL_CHANNELS
    assert len(entries) == 6 * HOUR // period
    assert_same(entries, expected(meter, start, end))
    # A cumulative register is never taken for an interval's energy.
    assert all(v < 1_000 for e in entries for v in e.values.values())
    uses = {c.source.split()[2]: (c.use, c.note) for c in config.columns}
    if variant.extra_columns:
        assert uses["1-0:1.5.0.255"] == ("ignored", "demand (last period)")
        assert uses["1-0:32.7.0.255"] == ("ignored", "voltage")
    if variant.tariffs:
        assert uses["1-0:1.8.1.255"] == ("cumulative", "tariff 1, summed")
    assert ("0-0:96.10.1.255" in uses) == variant.status_column


@pytest.mark.parametrize("profile", ["interval", "cumulative"])
@pytest.mark.parametrize("status_column", [True, False])
async def test_status_column_reaches_the_entry_it_closes(profile: str, status_column: bool) -> None:
    meter = SimulatedMeter("STATUS-1", seed=4)
    end = floor_hour(meter.real_now())
    # The clock was set 10 minutes into the hour before last: that entry says so (0x20).
    meter.clock_adjustments.append((end - 2 * HOUR + timedelta(minutes=10), 30.0))
    variant = DlmsVariant(profile=profile, status_column=status_column)
    async with await serve(meter, variant=variant) as srv, await connect(srv) as session:
        entries = await session.read_profile(end - 3 * HOUR, end)
    flagged = EntryStatus.CLOCK_ADJUSTED if status_column else 0
    assert [e.status for e in entries] == [0, flagged, 0]


async def test_cumulative_read_asks_for_one_entry_before_the_range() -> None:
    meter = SimulatedMeter("EXTRA-1", seed=5)
    end = floor_hour(meter.real_now())
    async with await serve(meter, variant=DlmsVariant(profile="cumulative")) as srv:
        async with await connect(srv) as session:
            entries = await session.read_profile(end - HOUR, end)
    # One hour asked, one hour given: the entry stamped at its start was read to open it.
    assert_same(entries, expected(meter, end - HOUR, end))


async def test_hole_in_the_meter_memory_is_not_filled() -> None:
    meter = SimulatedMeter("HOLE-1", seed=6)
    end = floor_hour(meter.real_now())
    hole = (end - 4 * HOUR, end - 3 * HOUR)  # the meter lost the entry stamped end − 3 h
    meter.faults.missing.append(hole)
    async with await serve(meter, variant=DlmsVariant(profile="cumulative")) as srv:
        async with await connect(srv) as session:
            entries = await session.read_profile(end - 8 * HOUR, end)
            kinds = [e.kind for e in session.events]
    starts = [e.start for e in entries]
    assert hole[0] not in starts  # lost by the meter
    assert end - 3 * HOUR not in starts  # its neighbour has no reading before it
    assert len(entries) == 6 and kinds == ["gap"]
    truth = expected(meter, end - 8 * HOUR, end)
    assert all(e.values == pytest.approx(truth[e.start]) for e in entries)


async def test_register_reset_gives_no_interval_across_it() -> None:
    meter = SimulatedMeter("RESET-1", seed=8)
    end = floor_hour(meter.real_now())
    async with await serve(meter, variant=DlmsVariant(profile="cumulative")) as srv:
        meter.faults.register_reset_at = end - 3 * HOUR  # meter cleared: memory restarts too
        async with await connect(srv) as session:
            entries = await session.read_profile(end - 8 * HOUR, end)
    assert all(0 <= v < 1_000 for e in entries for v in e.values.values())
    assert [e.start for e in entries] == [end - 2 * HOUR, end - HOUR]


async def test_32_bit_counter_rollover_is_differenced_and_flagged() -> None:
    meter = SimulatedMeter("WRAP-1", seed=9)
    end = floor_hour(meter.real_now())
    wrap = end - 3 * HOUR
    # Put the import register 50 Wh below 2**32 Wh at wrap − 1 h: it wraps in the next hour.
    before = meter.registers_at([wrap - HOUR])[Channel.ACTIVE_IMPORT][0]
    meter.initial_register += 2**32 / 1000 - 0.05 - before
    async with await serve(meter, variant=DlmsVariant(profile="cumulative")) as srv:
        async with await connect(srv) as session:
            entries = await session.read_profile(end - 6 * HOUR, end)
            kinds = [e.kind for e in session.events]
    assert_same(entries, expected(meter, end - 6 * HOUR, end))
    flagged = [e.start for e in entries if e.rollover]
    assert flagged == [wrap - HOUR]
    assert kinds == ["rollover"]


async def test_identity_from_the_logical_device_name_when_there_is_no_serial_object() -> None:
    meter = SimulatedMeter("LDN-7", manufacturer="ACME")
    variant = DlmsVariant(serial_object=False, logical_device_name="ACM0000000000007")
    async with await serve(meter, variant=variant) as srv:
        async with await connect(srv) as session:
            identity = await session.identify()
            assert session.identity_source == "0-0:42.0.0.255"
        async with await connect(srv, identity="serial") as session:
            with pytest.raises(NotSupported, match="96.1.0.255"):
                await session.identify()
    assert (identity.serial, identity.manufacturer) == ("ACM0000000000007", "ACME")


async def test_registry_may_pin_the_logical_device_name() -> None:
    meter = SimulatedMeter("BOTH-1")
    async with await serve(meter) as srv:
        async with await connect(srv) as session:
            assert (await session.identify()).serial == "BOTH-1"
        async with await connect(srv, identity="ldn") as session:
            assert (await session.identify()).serial == "CGMBOTH-1"


@pytest.mark.parametrize("answer", ["malformed", "refused", "partial"])
async def test_bad_list_answer_falls_back_to_single_gets(answer: str) -> None:
    meter = SimulatedMeter("LIST-1", seed=2)
    end = floor_hour(meter.real_now())
    driver = DlmsDriver()
    async with await serve(meter, variant=DlmsVariant(list_answer=answer)) as srv:
        endpoint = Endpoint("127.0.0.1", srv.port)
        async with await driver.connect(endpoint, LEVEL1, timeout=5.0) as session:
            identity = await session.identify()
            entries = await session.read_profile(end - 2 * HOUR, end)
            registers = await session.read_registers()
            events = list(session.events)
        async with await driver.connect(endpoint, LEVEL1, timeout=5.0) as session:
            await session.identify()
            assert session.events == []  # remembered for this meter
    assert identity.serial == "LIST-1"
    assert_same(entries, expected(meter, end - 2 * HOUR, end))
    assert {r.channel for r in registers} == set(ALL_CHANNELS)
    assert [e.kind for e in events] == ["list_fallback"]
    if answer == "malformed":  # the field meter's answer, as issue 10 reported it
        assert "c403" in events[0].detail
        # dlms-cosem's parser said IndexError('pop from empty bytearray'); the driver's says
        # where the list ends.
        assert "the list ends inside result" in events[0].detail


async def test_endless_blocks_end_in_a_protocol_error_with_bounded_memory() -> None:
    meter = SimulatedMeter("BLOCKS-1", seed=1, depth=24 * 35)
    end = floor_hour(meter.real_now())
    variant = DlmsVariant(endless_blocks=True)
    async with await serve(meter, max_pdu_size=4096, variant=variant) as srv:
        async with await connect(srv) as session:
            config = await session.read_profile_config()  # fits one PDU: no blocks
            tracemalloc.start()
            try:
                with pytest.raises(ProtocolError, match="transfer abandoned"):
                    await session.read_profile(end - 30 * 24 * HOUR, end)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            blocks = session.blocks_received
            with pytest.raises(Exception, match="unusable"):
                await session.read_clock()  # out of step: the session is closed
    # Cap: depth entries of 6 columns, at most 18 bytes a cell -> ~94 kB: 24 blocks of 4 kB.
    limit = 64 + (config.depth + 1) * (4 + 18 * 6)
    assert blocks == limit // (4096 - 12) + 1
    assert srv.stats.blocks_sent == blocks
    # Server and client together; the old reassembly grew without bound (2.2 GB in 10 s).
    assert peak < 3_000_000


async def test_long_honest_answer_still_passes_the_bound() -> None:
    meter = SimulatedMeter("LONG-1", seed=1, capture_period=QUARTER, depth=96 * 35)
    end = floor_hour(meter.real_now())
    async with await serve(meter, max_pdu_size=256, variant=DlmsVariant("cumulative")) as srv:
        async with await connect(srv) as session:
            entries = await session.read_profile(end - 30 * 24 * HOUR, end)
            blocks = session.blocks_received
    assert len(entries) == 30 * 96 and blocks > 100
    assert entries[-1].end == end and entries[0].start == end - 30 * 24 * HOUR
    assert datetime.now(UTC) > entries[-1].end
