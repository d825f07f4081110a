"""VEE runs against a real database: choice of source, flags with reasons, estimates,
idempotence, versions, manual edits and the prolonged-estimation alarm."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import psycopg
import pytest
from prometheus_client import REGISTRY

from cgm.localtime import hour_starts
from cgm.storage import Quality, readings_array, write_readings
from cgm.vee import VeeConfig, run_vee
from cgm.vee.daytype import same_type_days
from cgm.vee.edit import EditRefused, edit_settled
from cgm.vee.power import import_power
from tests.vee.conftest import COLLECTED, Frontier, load, make_frontier, put, settled

DAY = date(2026, 3, 10)  # a Tuesday, a working day
NOW = datetime(2026, 6, 1, tzinfo=UTC)


async def vee(conn: psycopg.AsyncConnection, f: Frontier, day: date = DAY, **cfg: object):
    return await run_vee(conn, day, f.code, config=VeeConfig(**cfg), now=NOW)  # type: ignore[arg-type]


async def both(conn: psycopg.AsyncConnection, f: Frontier, day: date, values: np.ndarray) -> None:
    await put(conn, f.principal, day, values)
    await put(conn, f.backup, day, values)


async def test_clean_day_settles_principal_in_primary_units(conn) -> None:
    f = await make_frontier(conn, ct=40.0, vt=100.0, adjustment=1.01)
    raw = load(f, DAY)
    await both(conn, f, DAY, raw)
    s = await vee(conn, f)
    rows = await settled(conn, f, DAY)
    assert len(rows) == 24 and s.by_source == {"principal": 24}
    np.testing.assert_allclose([r[0] for r in rows], raw * 40 * 100 * 1.01)
    value, source, method, flags, detail, version = rows[0]
    assert (source, method, flags, version) == ("principal", None, 0, 1)
    assert detail["meter_id"] == f.principal and detail["reading_version"] == 1
    assert detail["secondary"] == raw[0] and "checks" not in detail


async def test_rerun_on_unchanged_input_writes_nothing(conn) -> None:
    f = await make_frontier(conn)
    await put(conn, f.principal, DAY, load(f, DAY), skip=[3, 10, 11, 12, 13, 14])
    first = await vee(conn, f)
    assert first.written == 24

    async def counts() -> tuple[int, int]:
        cur = await conn.execute(
            """SELECT (SELECT count(*) FROM audit_log WHERE table_name = 'settled_reading'),
                      (SELECT count(*) FROM ingest_batch WHERE target = 'settled_reading')"""
        )
        return await cur.fetchone()

    before = await counts()
    again = await vee(conn, f)
    assert again.written == 0 and again.values == 24
    assert await counts() == before
    assert {r[5] for r in await settled(conn, f, DAY)} == {1}


async def test_one_hour_gap_is_interpolated_exactly_on_a_ramp(conn) -> None:
    f = await make_frontier(conn)
    ramp = 10.0 + 2.0 * np.arange(24)
    await both(conn, f, DAY, ramp)
    # Re-write both meters without period 8 (index 7): a new frontier keeps it simple.
    g = await make_frontier(conn)
    await put(conn, g.principal, DAY, ramp, skip=[7])
    await put(conn, g.backup, DAY, ramp, skip=[7])
    s = await vee(conn, g)
    rows = await settled(conn, g, DAY)
    value, source, method, flags, detail, _ = rows[7]
    assert (source, method) == ("estimate", "linear_interpolation")
    assert value == pytest.approx(ramp[7], abs=1e-12)
    assert flags & Quality.ESTIMATED
    assert detail["inputs"]["left"] == ramp[6] and detail["inputs"]["right"] == ramp[8]
    assert detail["checks"]["principal"]["missing"] == "no reading for the period"
    assert s.flagged["missing"] == 2  # both meters


async def test_failed_principal_is_covered_by_the_backup(conn) -> None:
    f = await make_frontier(conn, ct=2.0)
    raw = load(f, DAY)
    await put(conn, f.backup, DAY, raw)
    await conn.execute("UPDATE meter SET ct_ratio = 3 WHERE id = %s", (f.backup,))
    await conn.commit()
    await vee(conn, f)
    rows = await settled(conn, f, DAY)
    assert [r[1] for r in rows] == ["backup"] * 24
    np.testing.assert_allclose([r[0] for r in rows], raw * 3.0)  # the backup's own ratio
    assert rows[0][4]["meter_id"] == f.backup
    assert rows[0][4]["checks"]["principal"] == {"missing": "no reading for the period"}


async def _history(conn, f: Frontier, days: list[date]) -> None:
    for d in days:
        await both(conn, f, d, load(f, d))
        await vee(conn, f, d)


async def test_five_hour_gap_takes_the_median_of_the_same_day_type(conn) -> None:
    f = await make_frontier(conn)
    hist = same_type_days(DAY, 2, 3)
    await _history(conn, f, hist)
    gap = [9, 10, 11, 12, 13]
    raw = load(f, DAY)
    await put(conn, f.principal, DAY, raw, skip=gap)
    await put(conn, f.backup, DAY, raw, skip=gap)
    plain = {"typical_anchor": False, "typical_statistic": "median"}
    await vee(conn, f, typical_weeks=2, typical_max_days=3, **plain)
    rows = await settled(conn, f, DAY)
    expected = np.median(np.array([load(f, d) for d in hist]), axis=0)
    for i in gap:
        value, source, method, flags, detail, _ = rows[i]
        assert (source, method) == ("estimate", "typical_curve")
        assert value == pytest.approx(expected[i], rel=1e-12)
        assert detail["inputs"]["day_type"] == "working"
        assert detail["inputs"]["days"] == [d.isoformat() for d in hist]
        assert detail["inputs"]["gap_hours"] == 5
    # Estimation error on the simulator's shape stays small (noise is ±5 %).
    errors = [abs(rows[i][0] - raw[i]) / raw[i] for i in gap]
    assert max(errors) < 0.15
    # The default anchors the curve's level on the measured hours 9 and 15 and says so.
    await vee(conn, f, typical_weeks=2, typical_max_days=3)
    rows = await settled(conn, f, DAY)
    inputs = rows[11][4]["inputs"]
    assert rows[11][2] == "typical_curve_anchored" and inputs["statistic"] == "weighted"
    assert inputs["anchor_left"] > 0 and inputs["anchor_right"] > 0
    assert max(abs(rows[i][0] - raw[i]) / raw[i] for i in gap) < 0.15


async def test_typical_curve_leaves_out_estimated_days_and_can_use_the_mean(conn) -> None:
    f = await make_frontier(conn)
    hist = same_type_days(DAY, 2, 3)
    await _history(conn, f, hist[1:])
    # The most recent history day had a failure in period 1 (estimated), and much more
    # load: were it used, the curve would move.
    await put(conn, f.principal, hist[0], load(f, hist[0]) * 1.5, skip=[0])
    await vee(conn, f, hist[0])
    assert (await settled(conn, f, hist[0]))[0][1] == "estimate"
    await put(conn, f.principal, DAY, load(f, DAY), skip=range(6, 12))
    await vee(
        conn, f, typical_weeks=2, typical_max_days=3, typical_statistic="mean", typical_anchor=False
    )
    rows = await settled(conn, f, DAY)
    expected = np.mean(np.array([load(f, d) for d in hist[1:]]), axis=0)
    assert rows[8][2] == "typical_curve"
    assert rows[8][4]["inputs"]["days"] == [d.isoformat() for d in hist[1:]]
    assert rows[8][0] == pytest.approx(expected[8], rel=1e-12)


async def test_three_day_gap_is_estimated_and_raises_one_alarm(conn) -> None:
    f = await make_frontier(conn)
    start = date(2026, 4, 6)  # Monday
    hist = sorted({d for k in range(3) for d in same_type_days(start + timedelta(k), 2, 2)})
    await _history(conn, f, [d for d in hist if d < start])
    await both(conn, f, start - timedelta(days=1), load(f, start - timedelta(days=1)))
    await vee(conn, f, start - timedelta(days=1))
    cfg = {"typical_weeks": 2, "typical_max_days": 2, "prolonged_estimation": timedelta(days=2)}
    alarms = []
    for k in range(3):
        s = await vee(conn, f, start + timedelta(days=k), **cfg)
        alarms.append(s.alarms)
        rows = await settled(conn, f, start + timedelta(days=k))
        # The first day is anchored on the last measured hour; then nothing is measured.
        kind = "typical_curve_anchored" if k == 0 else "typical_curve"
        assert len(rows) == 24 and {r[2] for r in rows} == {kind}
    assert alarms == [0, 0, 1]
    again = await vee(conn, f, start + timedelta(days=2), **cfg)
    assert again.alarms == 0 and again.written == 0
    cur = await conn.execute(
        "SELECT activities FROM frontier_log WHERE frontier_id = %s AND kind = 'alarm'",
        (f.id,),
    )
    (act,) = [r[0] for r in await cur.fetchall()]
    assert act["channel"] == "active_import" and act["hours"] == 72.0
    assert act["since"] == hour_starts(start)[0].isoformat()


async def test_estimated_hours_gauge_follows_the_streak_and_goes_when_measured(conn) -> None:
    """The ops dashboard's cgm_vee_estimated_hours: a channel estimated since the start of
    a day shows its hours; once the next day is measured again its series is gone."""
    f = await make_frontier(conn)
    start = date(2026, 4, 6)  # Monday
    hist = sorted({d for d in same_type_days(start, 2, 2)} | {start - timedelta(days=1)})
    await _history(conn, f, [d for d in hist if d < start])
    cfg = {"typical_weeks": 2, "typical_max_days": 2}
    labels = {"frontier": f.code, "channel": "active_import"}

    def gauge() -> float | None:
        return REGISTRY.get_sample_value("cgm_vee_estimated_hours", labels)

    await vee(conn, f, start, **cfg)  # nothing read that day: all 24 hours estimated
    assert gauge() == 24.0
    nxt = start + timedelta(days=1)
    await both(conn, f, nxt, load(f, nxt))
    await vee(conn, f, nxt, **cfg)
    assert gauge() is None


async def test_spike_in_the_principal_is_replaced_by_the_backup(conn) -> None:
    f = await make_frontier(conn)
    raw = load(f, DAY)
    spiky = raw.copy()
    spiky[15] *= 10
    await put(conn, f.principal, DAY, spiky)
    await put(conn, f.backup, DAY, raw)
    await vee(conn, f)
    rows = await settled(conn, f, DAY)
    assert rows[15][1] == "backup" and rows[15][0] == raw[15]
    assert "spike_day" in rows[15][4]["checks"]["principal"]
    assert "day median" in rows[15][4]["checks"]["principal"]["spike_day"]
    assert [r[1] for i, r in enumerate(rows) if i != 15] == ["principal"] * 23


async def test_frozen_principal_values_are_replaced_by_the_backup(conn) -> None:
    f = await make_frontier(conn)
    raw = load(f, DAY)
    frozen = raw.copy()
    frozen[4:9] = frozen[4]
    await put(conn, f.principal, DAY, frozen)
    await put(conn, f.backup, DAY, raw)
    s = await vee(conn, f)
    rows = await settled(conn, f, DAY)
    assert [r[1] for r in rows[4:9]] == ["backup"] * 5
    assert rows[6][4]["checks"]["principal"]["frozen"].endswith("repeated for 5 h")
    assert s.flagged["frozen"] == 5


@pytest.mark.parametrize(
    ("divergence_pct", "flagged"),
    [(5.0, True), (-3.0, True), (0.5, False)],  # tolerance: 2 × (0.2 + 0.2 + 0.2) = 1.2 %
)
async def test_backup_divergence_against_accuracy_tolerance(conn, divergence_pct, flagged) -> None:
    f = await make_frontier(conn)
    raw = load(f, DAY)
    await put(conn, f.principal, DAY, raw)
    await put(conn, f.backup, DAY, raw * (1 + divergence_pct / 100))
    await vee(conn, f)
    rows = await settled(conn, f, DAY)
    assert [r[1] for r in rows] == ["principal"] * 24  # the principal stays the reference
    suspect = [bool(r[3] & Quality.SUSPECT) for r in rows]
    assert suspect == [flagged] * 24
    if flagged:
        why = rows[0][4]["checks"]["backup"]["backup_divergence"]
        assert "> 1.2 %" in why


async def test_capacity_and_clock_correction_flags(conn) -> None:
    f = await make_frontier(conn, capacity_mva=0.2)  # 200 kWh an hour, 240 with margin
    raw = load(f, DAY)
    high = raw.copy()
    high[19] = 250.0
    clk = {5: int(Quality.LARGE_CLOCK_CORRECTION)}
    await put(conn, f.principal, DAY, high, quality=clk)
    await put(conn, f.backup, DAY, raw)
    await vee(conn, f)
    rows = await settled(conn, f, DAY)
    assert rows[19][1] == "backup" and "capacity" in rows[19][4]["checks"]["principal"]
    assert rows[5][1] == "principal"
    assert rows[5][3] & Quality.LARGE_CLOCK_CORRECTION and rows[5][3] & Quality.SUSPECT
    assert "clock correction" in rows[5][4]["checks"]["principal"]["clock_correction"]


async def test_clock_correction_logged_in_the_hoja_de_vida_flags_the_interval(conn) -> None:
    f = await make_frontier(conn)
    await both(conn, f, DAY, load(f, DAY))
    at = hour_starts(DAY)[2] + timedelta(minutes=1)
    await conn.execute(
        """INSERT INTO frontier_log (frontier_id, meter_id, at, actor, kind, purpose)
           VALUES (%s, %s, %s, 'collector', 'level2_access', 'clock synchronisation')""",
        (f.id, f.principal, at),
    )
    await conn.commit()
    await vee(conn, f)
    rows = await settled(conn, f, DAY)
    assert "clock_correction" in rows[2][4]["checks"]["principal"]
    assert [i for i, r in enumerate(rows) if r[3] & Quality.SUSPECT] == [2]


async def _snapshot(conn, meter: int, at: datetime, value: float) -> None:
    await conn.execute(
        "INSERT INTO register_snapshot (meter_id, channel, read_at, value) VALUES (%s, 1, %s, %s)",
        (meter, at, value),
    )


async def test_register_advance_checks_the_day_and_scales_typical_estimates(conn) -> None:
    f = await make_frontier(conn, ct=10.0)
    hist = same_type_days(DAY, 2, 2)
    await _history(conn, f, hist)
    raw = load(f, DAY)
    gap = list(range(12, 18))
    await put(conn, f.principal, DAY, raw, skip=gap)
    await put(conn, f.backup, DAY, raw, skip=gap)
    starts = hour_starts(DAY)
    base = 5000.0
    await _snapshot(conn, f.principal, starts[12] + timedelta(seconds=40), base)
    true_gap = float(raw[12:18].sum())
    await _snapshot(conn, f.principal, starts[18] - timedelta(seconds=30), base + true_gap)
    await conn.commit()
    await vee(conn, f, typical_weeks=2, typical_max_days=2)
    rows = await settled(conn, f, DAY)
    got = [rows[i] for i in gap]
    assert {r[2] for r in got} == {"typical_curve_registers"}
    assert sum(r[0] for r in got) == pytest.approx(true_gap * 10.0, rel=1e-9)
    assert got[0][4]["inputs"]["register_start"] == base

    # A whole day whose interval sum disagrees with its register advance is flagged.
    g = await make_frontier(conn)
    await put(conn, g.principal, DAY, raw)
    await _snapshot(conn, g.principal, starts[0], 100.0)
    await _snapshot(conn, g.principal, starts[0] + timedelta(days=1), 100.0 + raw.sum() * 1.1)
    await conn.commit()
    await vee(conn, g)
    rows = await settled(conn, g, DAY)
    assert all("register_mismatch" in r[4]["checks"]["principal"] for r in rows)
    assert all(r[3] & Quality.SUSPECT and r[1] == "principal" for r in rows)


async def test_scada_power_integration_comes_before_interpolation(conn) -> None:
    f = await make_frontier(conn)
    raw = load(f, DAY)
    await put(conn, f.principal, DAY, raw, skip=[10])
    starts = hour_starts(DAY)
    samples = [
        (f.code, "active_import", starts[10] + timedelta(minutes=m), 40.0 + m / 3)
        for m in range(-15, 76, 15)
    ]
    assert await import_power(conn, samples) == len(samples)
    assert await import_power(conn, samples) == 0  # idempotent
    await vee(conn, f)
    rows = await settled(conn, f, DAY)
    value, source, method, _, detail, _ = rows[10]
    assert (source, method) == ("estimate", "scada_integration")
    assert value == pytest.approx(40.0 + 30 / 3, rel=1e-9)  # mean power over the hour × 1 h
    assert detail["inputs"]["samples"] == 5


async def test_new_reading_for_a_past_day_makes_a_new_version(conn) -> None:
    f = await make_frontier(conn)
    raw = load(f, DAY)
    await put(conn, f.principal, DAY, raw, skip=[20])
    await vee(conn, f)
    assert (await settled(conn, f, DAY))[20][1] == "estimate"
    await put(conn, f.principal, DAY, raw)  # the missing interval arrives late
    s = await vee(conn, f)
    assert s.written == 1
    rows = await settled(conn, f, DAY)
    assert rows[20][1] == "principal" and rows[20][5] == 2 and rows[20][0] == raw[20]
    assert {r[5] for i, r in enumerate(rows) if i != 20} == {1}
    cur = await conn.execute(
        """SELECT version, source FROM settled_version
           WHERE frontier_id = %s AND interval_start = %s ORDER BY version""",
        (f.id, hour_starts(DAY)[20]),
    )
    assert await cur.fetchall() == [(1, "estimate"), (2, "principal")]


async def test_manual_edit_needs_level_2_and_survives_reruns(conn) -> None:
    f = await make_frontier(conn)
    await both(conn, f, DAY, load(f, DAY))
    await vee(conn, f)
    t = hour_starts(DAY)[3]
    args = dict(frontier=f.code, channel="active_import", interval_start=t, value=42.0)
    with pytest.raises(EditRefused, match="level 2"):
        await edit_settled(conn, **args, reason="meter replaced", actor="ana", level=1)
    stored = await edit_settled(conn, **args, reason="meter replaced", actor="ana", level=2)
    assert (stored.value, stored.source, stored.version, stored.actor) == (42.0, "manual", 2, "ana")
    s = await vee(conn, f)
    assert s.kept_manual == 1 and s.written == 0
    cur = await conn.execute(
        """SELECT version, source, actor, reason FROM settled_version
           WHERE frontier_id = %s AND interval_start = %s ORDER BY version""",
        (f.id, t),
    )
    assert await cur.fetchall() == [
        (1, "principal", "vee", f"vee {DAY}"),
        (2, "manual", "ana", "meter replaced"),
    ]


async def test_partial_day_settles_only_ended_hours(conn) -> None:
    f = await make_frontier(conn)
    raw = load(f, DAY)
    await put(conn, f.principal, DAY, raw, skip=range(10, 24))
    now = hour_starts(DAY)[10]  # periods 1..10 have ended
    s = await run_vee(conn, DAY, f.code, now=now)
    assert s.values == 10 and s.flagged["missing"] == 10  # the silent backup, ended hours
    assert len(await settled(conn, f, DAY)) == 10


async def test_all_channels_are_settled(conn) -> None:
    f = await make_frontier(
        conn, channels=("active_import", "active_export", "reactive_import", "reactive_export")
    )
    starts = np.array([int(t.timestamp()) for t in hour_starts(DAY)])
    values = f.sim.interval_values(starts)
    for ch, v in values.items():
        await put(conn, f.principal, DAY, v, channel=ch.value)
        await put(conn, f.backup, DAY, v, channel=ch.value)
    s = await vee(conn, f)
    assert s.series == 4 and s.by_source == {"principal": 96}
    # Export is zero all day on a load: a run of zeros is not an error without history.
    assert "zero_run" not in s.flagged


async def test_partial_hour_is_not_settled_as_measured(conn) -> None:
    """An incomplete hour (PARTIAL) understates the energy: the backup stands in for it,
    and where the backup is partial too the hour is estimated; the reason is kept."""
    f = await make_frontier(conn)
    raw = load(f, DAY)
    cut = raw.copy()
    cut[[6, 15]] *= 0.5  # half the hour's entries
    await put(conn, f.principal, DAY, cut, quality={6: Quality.PARTIAL, 15: Quality.PARTIAL})
    backup = raw.copy()
    backup[15] = cut[15]
    await put(conn, f.backup, DAY, backup, quality={15: Quality.PARTIAL})
    s = await vee(conn, f)
    rows = await settled(conn, f, DAY)
    assert [r[1] for r in rows] == ["principal"] * 6 + ["backup"] + ["principal"] * 8 + [
        "estimate"
    ] + ["principal"] * 8
    assert rows[6][0] == pytest.approx(raw[6])
    assert "incomplete hour" in rows[6][4]["checks"]["principal"]["partial"]
    assert set(rows[15][4]["checks"]) == {"principal", "backup"}
    assert rows[15][3] & Quality.ESTIMATED and not rows[15][3] & Quality.PARTIAL
    assert rows[15][0] > 0.8 * raw[15]  # not the half hour that was read
    assert s.flagged["partial"] == 3
    assert not any(r[3] & Quality.PARTIAL for r in rows)


async def test_partial_hour_kept_when_the_rule_only_flags(conn) -> None:
    f = await make_frontier(conn)
    raw = load(f, DAY)
    await put(conn, f.principal, DAY, raw, quality={9: Quality.PARTIAL})
    await vee(conn, f, reject=VeeConfig().reject - {"partial"})
    rows = await settled(conn, f, DAY)
    assert rows[9][1] == "principal"
    assert rows[9][3] & Quality.PARTIAL and rows[9][3] & Quality.SUSPECT
    assert [i for i, r in enumerate(rows) if r[3]] == [9]


async def test_register_rollover_carried_to_the_settled_value_and_reported(conn) -> None:
    from cgm.api.encode import flag_names
    from cgm.storage.settled import read_settled

    f = await make_frontier(conn)
    raw = load(f, DAY)
    await put(conn, f.principal, DAY, raw, quality={11: Quality.REGISTER_ROLLOVER})
    await put(conn, f.backup, DAY, raw)
    s = await vee(conn, f)
    rows = await settled(conn, f, DAY)
    assert [r[1] for r in rows] == ["principal"] * 24  # the value across the wrap is kept
    assert rows[11][0] == pytest.approx(raw[11])
    assert rows[11][3] & Quality.REGISTER_ROLLOVER and rows[11][3] & Quality.SUSPECT
    assert "wrapped" in rows[11][4]["checks"]["principal"]["register_rollover"]
    assert [i for i, r in enumerate(rows) if r[3]] == [11]
    assert s.flagged["register_rollover"] == 1 and s.as_dict()["flagged"]["register_rollover"]
    start = hour_starts(DAY)[0]
    api_rows = await read_settled(conn, [f.id], start, start + timedelta(days=1))
    assert "REGISTER_ROLLOVER" in list(flag_names(api_rows[11].flags))  # what the API shows
    again = await vee(conn, f)
    assert again.written == 0


async def test_reading_off_the_hour_rejects_that_period_of_that_meter_only(conn) -> None:
    """A reading stamped at hh:30 has no hourly slot: the period it falls in is flagged
    off_grid on that meter and the backup's value is settled there; the other periods
    and the other meter are read as usual (regression: the reading→series mapping)."""
    f = await make_frontier(conn)
    raw = load(f, DAY)
    await both(conn, f, DAY, raw)
    half = hour_starts(DAY)[4] + timedelta(minutes=30)  # inside period 5
    arr = readings_array(f.principal, "active_import", [half], [1.0], [0], COLLECTED)
    await write_readings(conn, arr, source="test", actor="pytest", interval=timedelta(minutes=30))
    await conn.commit()
    s = await vee(conn, f)
    rows = await settled(conn, f, DAY)
    assert s.flagged["off_grid"] == 1
    assert [r[1] for r in rows] == ["principal"] * 4 + ["backup"] + ["principal"] * 19
    np.testing.assert_allclose([r[0] for r in rows], raw)
