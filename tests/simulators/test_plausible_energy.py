"""Simulated meters give physically possible secondary energy that settles to the declared size.

A fleet goes through what the CGM does with real meters: registry import, a collection
cycle over Modbus (the meters' whole memory), and VEE, which applies CT × VT ratios. Four
whole weeks of settled primary energy, scaled to a 730-hour month, must land near each
frontier's declared MWh-month; and no raw (secondary) hourly value may exceed what the
meter's inputs allow: √3 × VT secondary × CT secondary (120 % extended range) × 1 h.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import psycopg
import pytest

from cgm.collection.engine import Collector, EngineConfig, current_cycle
from cgm.collection.session import SessionPolicy
from cgm.localtime import day_bounds, local_day
from cgm.vee import vee_after_collection
from drivers.base import Channel
from simulators.fleet import HOURS_PER_MONTH, build_fleet, installation_for, start_fleet
from simulators.meter import SimulatedMeter, ar1_noise
from tests.fixtures.fleet import FleetEnv, exact_clocks, migrated_database

FAST = EngineConfig(policy=SessionPolicy(timeout=10.0, attempts=1, backoff=0.01))
TOLERANCE = 0.05  # settled monthly equivalent within 5 % of the declared energy


async def test_simulated_frontiers_settle_to_their_declared_monthly_energy(
    new_database: Callable[[], str], tmp_path: Path
) -> None:
    url = migrated_database(new_database)
    fleet = build_fleet(4, seed=3, mix={"modbus": 1.0}, first_code=88001)
    levels = {f.installation.voltage_level for f in fleet.frontiers}
    assert len(levels) >= 2, levels  # low voltage and behind CTs/VTs both exercised
    exact_clocks(fleet)
    now = datetime.now(UTC)
    await start_fleet(fleet, per_port=8)
    try:
        env = FleetEnv(url, fleet, tmp_path)
        env.import_()
        cycle = current_cycle(now)
        summary = await Collector(url, env.box, FAST).run_cycle(cycle)
        assert summary.ok == 8
    finally:
        await fleet.stop()
    last_day = local_day(now) - timedelta(days=1)
    start, _ = day_bounds(last_day - timedelta(days=27))
    _, end = day_bounds(last_day)
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await vee_after_collection(conn, cycle, now=now)
        for f in fleet.frontiers:
            channel = 2 if f.kind == "generation" else 1  # declared: energy out or in
            cur = await conn.execute(
                """SELECT count(*), sum(value) FROM settled_reading s
                   JOIN frontier fr ON fr.id = s.frontier_id
                   WHERE fr.code = %s AND channel = %s AND interval_start >= %s
                     AND interval_start < %s""",
                (f.code, channel, start, end),
            )
            count, total_kwh = await cur.fetchone()
            assert count == 28 * 24, f.code
            monthly_mwh = total_kwh / count * HOURS_PER_MONTH / 1000
            assert monthly_mwh == pytest.approx(f.monthly_energy_mwh, rel=TOLERANCE), f.code
            cur = await conn.execute(
                """SELECT max(value) FROM reading r JOIN meter m ON m.id = r.meter_id
                   WHERE m.serial IN (%s, %s) AND channel = %s""",
                (f.principal.serial, f.backup.serial, channel),
            )
            (highest,) = await cur.fetchone()
            assert 0 < highest <= f.installation.max_secondary_kw, f.code


def test_meter_inputs_bound_every_simulated_hour() -> None:
    """For every frontier size, the busiest hour fits the meter's inputs and the CT rating."""
    for fleet_seed in range(3):
        for f in build_fleet(60, seed=fleet_seed).frontiers:
            site = f.installation
            assert f.principal.peak_kw <= site.max_secondary_kw, (f.code, site)
            primary_peak = f.principal.peak_kw * site.ct_ratio * site.vt_ratio
            amps = primary_peak / (3**0.5 * site.system_kv * 0.9)
            assert amps <= site.ct_primary * 1.2, (f.code, site)
    # The example: 8,182 MWh-month is a 34.5 kV frontier, not 13.2 kV behind 200/5.
    site = installation_for(8_181.7 * 1000 / HOURS_PER_MONTH * 1.9)
    assert (site.voltage_level, site.vt_ratio) == (3, 34_500 / 120)


def test_load_noise_is_autocorrelated_and_a_pure_function_of_seed_and_interval() -> None:
    x = ar1_noise(42, np.arange(0, 50_000), 1.0)
    assert abs(np.corrcoef(x[:-1], x[1:])[0, 1] - 0.9) < 0.02  # AR(1), φ = 0.9 per hour
    assert 0.045 < x.std() < 0.055
    window = ar1_noise(42, np.arange(30_000, 30_024), 1.0)
    assert np.array_equal(window, x[30_000:30_024])  # no dependence on what else was asked
    assert not np.array_equal(window, ar1_noise(43, np.arange(30_000, 30_024), 1.0))
    day = datetime(2026, 3, 2, tzinfo=UTC)
    starts = np.arange(int(day.timestamp()), int(day.timestamp()) + 86400, 3600)
    a = SimulatedMeter("P", seed=7, mean_kw=1.0).interval_values(starts)
    b = SimulatedMeter("B", seed=7, mean_kw=1.0).interval_values(starts[5:9])
    assert np.array_equal(a[Channel.ACTIVE_IMPORT][5:9], b[Channel.ACTIVE_IMPORT])
