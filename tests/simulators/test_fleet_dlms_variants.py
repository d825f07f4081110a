"""A fleet whose DLMS meters use the field layouts reads as the meters measured."""

from __future__ import annotations

from datetime import timedelta

import pytest

from drivers import AccessLevel, Credentials, Endpoint
from drivers.dlms import DlmsDriver
from simulators.fleet import build_fleet, parse_mix, start_fleet


async def test_every_dlms_variant_of_a_fleet_reads_right() -> None:
    fleet = build_fleet(4, seed=5, mix=parse_mix("dlms=1"), first_code=88000, dlms_variants=True)
    await start_fleet(fleet, per_port=2)
    driver = DlmsDriver()
    seen = set()
    try:
        for _, meter in fleet.meters():
            place = fleet.placements[meter.serial]
            variant = fleet.dlms_variants[meter.serial]
            seen.add((variant.profile, variant.serial_object, meter.capture_period))
            end = meter.real_now().replace(minute=0, second=0, microsecond=0)
            start = end - timedelta(hours=3)
            async with await driver.connect(
                Endpoint(place.host, place.port),
                Credentials(AccessLevel.READ, meter.secrets.level1),
                place.params,
                5.0,
            ) as session:
                assert (await session.identify()).serial == meter.serial
                entries = await session.read_profile(start, end)
            truth = {e.start: e.values for e in meter.profile(start, end)}
            assert [e.start for e in entries] == sorted(truth)
            for e in entries:
                assert e.values == pytest.approx(truth[e.start], abs=1e-9)
    finally:
        await fleet.stop()
    assert seen == {
        ("interval", True, timedelta(hours=1)),
        ("cumulative", True, timedelta(hours=1)),
        ("cumulative", False, timedelta(hours=1)),
        ("interval", True, timedelta(minutes=15)),
    }
