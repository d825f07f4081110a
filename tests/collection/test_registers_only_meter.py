"""A real meter's map with no clock, no login and no profile (Schneider iEM3000) is collected:
the cycle succeeds, its registers are kept as snapshots, and hours between snapshots become
intervals through the one cumulative-to-interval path."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import yaml

from cgm import registry
from cgm.collection.engine import Collector, EngineConfig, current_cycle
from cgm.collection.session import SessionPolicy
from cgm.config import Settings
from cgm.migrate import upgrade
from cgm.security import secret_box
from drivers.base import Channel
from simulators.meter import SimulatedMeter
from simulators.modbus import serve

FAST = EngineConfig(policy=SessionPolicy(timeout=5.0, attempts=1, backoff=0.01))


async def test_clockless_modbus_meter_is_collected_from_register_snapshots(
    new_database: Callable[[], str], tmp_path: Path
) -> None:
    url = new_database()
    upgrade(url, Settings(database_url=url))
    real_now = datetime.now(UTC)
    t = [real_now]
    meters = {
        1: SimulatedMeter("3000000001", seed=4, mean_kw=0.5, now=lambda: t[0]),
        2: SimulatedMeter("3000000002", seed=4, mean_kw=0.5, now=lambda: t[0]),
    }
    sim = await serve(meters, map="schneider-iem3000")
    meter_entries = [
        {
            "serial": m.serial,
            "role": role,
            "protocol": "modbus",
            "endpoint": f"127.0.0.1:{sim.port}",
            "params": {"map": "schneider-iem3000", "device_id": unit},
            "ct_ratio": "30/5",
            "vt_ratio": "13200/120",
            "accuracy_active": "0.5S",
            "accuracy_reactive": "2",
            "credentials": {"level1": {"secret": "unused"}},
        }
        for (unit, m), role in zip(meters.items(), ("principal", "backup"), strict=True)
    ]
    inventory = {
        "frontiers": [
            {
                "code": "Frt66001",
                "name": "Registers-only frontier",
                "kind": "commercialisation",
                "voltage_level": 2,
                "monthly_energy_mwh": 240.0,
                "meters": meter_entries,
            }
        ]
    }
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(inventory))
    box = secret_box(Settings(database_url=url, data_dir=tmp_path))
    try:
        with psycopg.connect(url) as conn:
            registry.import_inventory(conn, registry.load(path), box, actor="pytest")
            # Earlier cycles' snapshots, taken on the hour (the driver stamps reads with the
            # CGM's clock, so history is written as those cycles would have left it).
            top = real_now.replace(minute=0, second=0, microsecond=0)
            for k in (2, 1, 0):
                t[0] = top - timedelta(hours=k)
                for m in meters.values():
                    conn.execute(
                        """INSERT INTO register_snapshot (meter_id, channel, read_at, value)
                           SELECT id, 1, %s, %s FROM meter WHERE serial = %s""",
                        (t[0], m.registers()[Channel.ACTIVE_IMPORT], m.serial),
                    )
        t[0] = datetime.now(UTC)
        summary = await Collector(url, box, FAST).run_cycle(current_cycle(t[0]))
        assert summary.ok == 2, summary
    finally:
        await sim.stop()
    with psycopg.connect(url) as conn:
        (snapshots,) = conn.execute(
            "SELECT count(*) FROM register_snapshot WHERE channel = 1"
        ).fetchone()
        assert snapshots == 8  # three earlier ones and this cycle's, per meter
        rows = dict(
            conn.execute(
                """SELECT r.interval_start, r.value FROM reading r
                   JOIN meter m ON m.id = r.meter_id
                   WHERE m.serial = '3000000001' AND r.channel = 1"""
            ).fetchall()
        )
    # Each whole hour between snapshots is the register's advance: the meter's own hourly
    # energy (secondary kWh, about 0.5), never the register value itself.
    expected = {
        e.start: e.values[Channel.ACTIVE_IMPORT]
        for e in meters[1].profile(top - timedelta(hours=2), top)
    }
    assert len(expected) == 2
    for start, value in expected.items():
        assert rows[start] == pytest.approx(value, abs=0.002), start
        assert 0.2 < rows[start] < 1.0
