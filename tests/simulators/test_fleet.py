"""A simulated fleet end to end: served over the three protocols, described by an inventory
the registry accepts, and every meter answering a probe with its own identity."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from cgm import registry
from drivers import AccessLevel, Credentials, get_driver
from simulators.fleet import build_fleet, parse_mix, point_type, start_fleet
from tests.fixtures.fleet import FleetEnv, migrated_database
from tests.fixtures.mqtt import run_code


def test_mix_is_normalised_and_bad_mix_is_refused() -> None:
    assert parse_mix("dlms=1,modbus=1") == {"dlms": 0.5, "modbus": 0.5}
    with pytest.raises(ValueError, match="bad mix entry"):
        parse_mix("dlms=.5,iec104=.5")
    with pytest.raises(ValueError, match="not all zero"):
        parse_mix("dlms=0")


def test_fleet_is_deterministic_and_pairs_share_a_load() -> None:
    a, b = build_fleet(20, seed=7), build_fleet(20, seed=7)
    assert [f.code for f in a.frontiers] == [f.code for f in b.frontiers]
    assert [f.protocol for f in a.frontiers] == [f.protocol for f in b.frontiers]
    f = a.frontiers[0]
    assert f.principal.seed == f.backup.seed and f.principal.serial != f.backup.serial
    assert {point_type(x.monthly_energy_mwh) for x in build_fleet(200).frontiers} == {1, 2, 3, 4, 5}


async def test_fleet_inventory_imports_and_every_meter_answers(
    mqtt_broker: tuple[str, int], new_database: Callable[[], str], tmp_path: Path
) -> None:
    db_url = migrated_database(new_database)
    mix = parse_mix("dlms=1,modbus=1,mqtt=1")
    fleet = build_fleet(6, seed=11, mix=mix, first_code=run_code(77001))
    assert {f.protocol for f in fleet.frontiers} == {"dlms", "modbus", "mqtt"}
    await start_fleet(fleet, mqtt=mqtt_broker, per_port=2)
    try:
        env = FleetEnv(db_url, fleet, tmp_path)
        report = env.import_()
        assert report.meters_inserted == 12
        # The fleet is built compliant: backups present, Table 2 classes, twins alike.
        assert not any(report.violations.values())
        box = env.box
        with psycopg.connect(db_url) as conn:
            meters = registry.active_meters(conn, box)
        assert len(meters) == 12
        for m in meters:
            cred = m.credential(AccessLevel.READ)
            assert cred is not None
            session = await get_driver(m.protocol).connect(m.endpoints[0], cred, m.params, 5.0)
            async with session:
                assert (await session.identify()).serial == m.serial
        # A wrong secret is refused by whichever meter is asked.
        m = meters[0]
        with pytest.raises(Exception) as info:
            await get_driver(m.protocol).connect(
                m.endpoints[0], Credentials(AccessLevel.READ, "wrong"), m.params, 5.0
            )
        assert getattr(info.value, "reason", None) == "auth"
    finally:
        await fleet.stop()


async def test_mixed_dlms_access_fleet_imports_and_answers_at_level2(
    new_database: Callable[[], str], tmp_path: Path
) -> None:
    """LLS, HLS, HLS-GMAC and HDLC meters side by side (and the field layouts with them),
    through the registry and back."""
    from datetime import UTC, datetime

    from cgm.security.counters import PgInvocationCounterStore
    from drivers.dlms import DlmsDriver

    db_url = migrated_database(new_database)
    fleet = build_fleet(4, seed=3, mix={"dlms": 1.0}, first_code=76001, dlms_variants=True)
    await start_fleet(fleet, per_port=2, dlms_access="mixed")
    store = PgInvocationCounterStore(db_url)
    try:
        env = FleetEnv(db_url, fleet, tmp_path)
        env.import_()
        box = env.box
        with psycopg.connect(db_url) as conn:
            meters = registry.active_meters(conn, box)
        kinds = {
            (m.params.get("level2_auth", "lls"), m.params.get("framing", "wrapper")) for m in meters
        }
        assert kinds == {
            ("lls", "wrapper"),
            ("hls", "wrapper"),
            ("hls-gmac", "wrapper"),
            ("hls", "hdlc"),
        }
        driver = DlmsDriver(counter_store=store)
        for m in meters:
            cred = m.credential(AccessLevel.CONFIGURE)
            assert cred is not None
            async with await driver.connect(m.endpoints[0], cred, m.params, 5.0) as session:
                await session.set_clock(datetime.now(UTC))
                assert abs((await session.read_clock()).offset) < 2
                assert (await session.identify()).serial == m.serial
    finally:
        await store.close()
        await fleet.stop()
