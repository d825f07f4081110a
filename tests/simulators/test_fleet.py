"""A simulated fleet end to end: served over the three protocols, described by an inventory
the registry accepts, and every meter answering a probe with its own identity."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import yaml

from cgm import registry
from cgm.config import Settings
from cgm.migrate import upgrade
from cgm.security import secret_box
from drivers import AccessLevel, Credentials, get_driver
from simulators.fleet import build_fleet, inventory, parse_mix, point_type, start_fleet


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
    db_url = new_database()
    upgrade(db_url, Settings(database_url=db_url))
    fleet = build_fleet(6, seed=11, mix=parse_mix("dlms=1,modbus=1,mqtt=1"), first_code=77001)
    assert {f.protocol for f in fleet.frontiers} == {"dlms", "modbus", "mqtt"}
    await start_fleet(fleet, mqtt=mqtt_broker, per_port=2)
    try:
        path = tmp_path / "fleet.yaml"
        path.write_text(yaml.safe_dump(inventory(fleet)))
        box = secret_box(Settings(database_url=db_url, data_dir=tmp_path))
        with psycopg.connect(db_url) as conn:
            report = registry.import_inventory(conn, registry.load(path), box, actor="pytest")
            assert report.meters_inserted == 12
            # The fleet is built compliant: backups present, Table 2 classes, twins alike.
            assert not any(report.violations.values())
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
