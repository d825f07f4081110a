"""Profile semantics, identity and GET-with-list fallback against a Gurux-served gurux_meter.

The meter is served by gurux-dlms (``tests/fixtures/gurux_server.py``), an implementation
independent of the driver's: its profile captures the cumulative registers, it identifies
itself only by the logical device name, and it answers a GET-with-list that names an object
it lacks with a malformed list (issue 10's ``IndexError('pop from empty bytearray')``).
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from drivers.base import Channel
from drivers.dlms import DlmsDriver
from tests.fixtures.gurux_server import (
    GuruxDlmsServer,
    GuruxMeter,
    connect,
)

HOUR = timedelta(hours=1)


async def test_cumulative_profile_becomes_interval_energy(
    gurux: GuruxDlmsServer, gurux_meter: GuruxMeter
) -> None:
    end = gurux_meter.rows[-1][0]
    start = end - 24 * HOUR
    async with await connect(gurux) as session:
        config = await session.read_profile_config()
        entries = await session.read_profile(start, end)
    # Issue 10: 16316.312 kWh was stored for every hour; an hour is ~0.3 kWh.
    assert [e.start for e in entries] == [start + i * HOUR for i in range(24)]
    for e in entries:
        wh = gurux_meter.interval(e.end)
        assert e.values == {
            Channel.ACTIVE_IMPORT: wh[0] / 1000,
            Channel.ACTIVE_EXPORT: wh[1] / 1000,
            Channel.REACTIVE_IMPORT: wh[2] / 1000,
            Channel.REACTIVE_EXPORT: wh[3] / 1000,
        }
        assert 0.3 <= e.values[Channel.ACTIVE_IMPORT] < 0.4
    uses = [(c.source, c.use, c.channel, c.scaler, c.unit) for c in config.columns]
    assert uses == [
        ("class 8 0-0:1.0.0.255 attr 2", "clock", None, None, None),
        ("class 3 1-0:1.8.0.255 attr 2", "cumulative", Channel.ACTIVE_IMPORT, 0, "Wh"),
        ("class 3 1-0:2.8.0.255 attr 2", "cumulative", Channel.ACTIVE_EXPORT, 0, "Wh"),
        ("class 3 1-0:3.8.0.255 attr 2", "cumulative", Channel.REACTIVE_IMPORT, 0, "varh"),
        ("class 3 1-0:4.8.0.255 attr 2", "cumulative", Channel.REACTIVE_EXPORT, 0, "varh"),
    ]


async def test_first_hour_after_a_gap_in_the_buffer_is_not_invented(
    gurux_meter: GuruxMeter,
) -> None:
    end = gurux_meter.rows[-1][0]
    hole = end - 10 * HOUR
    gurux_meter.rows = [r for r in gurux_meter.rows if r[0] != hole]  # the meter lost one entry
    async with GuruxDlmsServer(gurux_meter) as srv, await connect(srv) as session:
        entries = await session.read_profile(end - 24 * HOUR, end)
        events = [e.kind for e in session.events]
    starts = {e.start for e in entries}
    # Neither the hour that ends at the hole nor the one after it has both readings.
    assert hole - HOUR not in starts and hole not in starts
    assert len(entries) == 22
    assert events == ["gap"]


async def test_rollover_from_the_register_digits(gurux_meter: GuruxMeter) -> None:
    end = gurux_meter.rows[-1][0]
    # An 8-digit Wh counter: move the import register so that it wraps 5 hours before end.
    wrap_at = end - 5 * HOUR
    top = 100_000_000
    shift = top - dict(gurux_meter.rows)[wrap_at][0] + 150  # the row at wrap_at reads 150 Wh past 0
    gurux_meter.rows = [
        (t, ((v[0] + shift) % top, *v[1:]))
        for t, v in gurux_meter.rows  # type: ignore[misc]
    ]
    async with (
        GuruxDlmsServer(gurux_meter) as srv,
        await connect(srv, register_digits=8) as session,
    ):
        entries = await session.read_profile(end - 12 * HOUR, end)
        events = [e.kind for e in session.events]
    by_start = {e.start: e for e in entries}
    wrapped = by_start[wrap_at - HOUR]
    assert wrapped.values[Channel.ACTIVE_IMPORT] == (gurux_meter.interval(wrap_at)[0] % top) / 1000
    assert wrapped.rollover == frozenset({Channel.ACTIVE_IMPORT})
    assert all(0 <= e.values[Channel.ACTIVE_IMPORT] < 1 for e in entries)
    assert len(entries) == 12 and events == ["rollover"]


async def test_without_register_digits_a_wrap_is_a_reset_never_a_huge_value(
    gurux_meter: GuruxMeter,
) -> None:
    end = gurux_meter.rows[-1][0]
    reset_at = end - 5 * HOUR
    gurux_meter.rows = [  # meter cleared: registers restart near zero at reset_at
        (
            t,
            tuple(x - dict(gurux_meter.rows)[reset_at][i] + 7 for i, x in enumerate(v))
            if t >= reset_at
            else v,
        )
        for t, v in gurux_meter.rows
    ]
    async with GuruxDlmsServer(gurux_meter) as srv, await connect(srv) as session:
        entries = await session.read_profile(end - 12 * HOUR, end)
        events = [e.kind for e in session.events]
    assert reset_at - HOUR not in {e.start for e in entries}
    assert len(entries) == 11
    assert all(0 <= v < 1 for e in entries for v in e.values.values())
    assert "reset" in events


async def test_identity_from_the_logical_device_name(gurux: GuruxDlmsServer) -> None:
    async with await connect(gurux) as session:
        identity = await session.identify()
    assert identity.serial == "GRX0000000012345"
    assert session.identity_source == "0-0:42.0.0.255"
    assert (identity.manufacturer, identity.model, identity.firmware) == ("", "", "")


async def test_malformed_list_answer_falls_back_and_is_remembered(
    gurux: GuruxDlmsServer,
) -> None:
    driver = DlmsDriver()  # its own memory of meters that fail GET-with-list
    async with await connect(gurux, driver=driver) as session:
        identity = await session.identify()  # a list naming objects Gurux lacks
        clock = await session.read_clock()  # the session goes on
        events = [e.kind for e in session.events]
        first = session.requests_sent
    assert identity.serial == "GRX0000000012345"
    assert abs(clock.offset) < 2
    assert events == ["list_fallback"]
    async with await connect(gurux, driver=driver) as session:
        await session.identify()
        assert session.events == []  # remembered: straight to single GETs
        # AARQ + 5 single GETs; the first session also sent the failed list and the clock.
        assert session.requests_sent == first - 2 == 6


async def test_serial_object_required_when_the_registry_says_so(gurux: GuruxDlmsServer) -> None:
    from drivers.base import NotSupported

    async with await connect(gurux, driver=DlmsDriver(), identity="serial") as session:
        with pytest.raises(NotSupported, match="96.1.0.255"):
            await session.identify()
