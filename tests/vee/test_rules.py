"""Rules and estimation methods as pure functions: data-driven cases, no database."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest

from cgm.storage import Quality
from cgm.vee import VeeConfig
from cgm.vee import estimate as est
from cgm.vee.daytype import SATURDAY, SUNDAY_HOLIDAY, WORKING, day_type, same_type_days
from cgm.vee.rules import check_divergence, check_meter, equal_runs, meter_error_pct, run_lengths
from cgm.vee.typical import typical_curves

BASE = 100.0 + 10.0 * np.sin(np.arange(26) / 4.0)  # a smooth day, no rule fires


def window(**changes: float) -> np.ndarray:
    v = BASE.copy()
    for k, x in changes.items():
        v[int(k[1:])] = x
    return v[None, :]


def fired(values: np.ndarray, quality: int | np.ndarray = 0, **kw: object) -> dict[str, list[int]]:
    q = np.broadcast_to(np.asarray(quality, dtype=np.int64), values.shape).copy()
    due = np.ones(values.shape, dtype=bool)
    checks = check_meter(values, q, due=due, config=kw.pop("config", VeeConfig()), **kw)  # type: ignore[arg-type]
    return {r: np.flatnonzero(m[0]).tolist() for r, m in checks.masks.items()}


@pytest.mark.parametrize(
    ("values", "kwargs", "expected"),
    [
        (window(), {}, {}),
        (window(c5=np.nan), {}, {"missing": [5]}),
        (window(c0=np.nan, c25=np.nan), {}, {}),  # neighbours of other days are not missing
        (window(c7=-1.0), {}, {"negative": [7]}),
        (window(c9=900.0), {}, {"spike_day": [9]}),
        (window(c9=250.0), {}, {}),  # 2.5 × median: below the factor 3
        (window(c9=900.0), {"config": VeeConfig(disabled=frozenset({"spike_day"}))}, {}),
        (window(c3=200.0), {"capacity_kwh": np.array([125.0])}, {"capacity": [3]}),
        (
            window(c4=50.0, c5=50.0, c6=50.0, c7=50.0),
            {},
            {"frozen": [4, 5, 6, 7]},
        ),
        (window(c4=50.0, c5=50.0, c6=50.0), {}, {}),  # 3 h: below frozen_run_hours
        (
            np.where(np.arange(26) < 12, 0.0, BASE)[None, :],
            {"typical": np.full((1, 24), 80.0)},
            {"zero_run": list(range(1, 12))},
        ),
        (
            np.where(np.arange(26) < 12, 0.0, BASE)[None, :],
            {"typical": np.where(np.arange(24) < 11, 0.0, 80.0)[None, :]},
            {},  # zeros where the day type is zero too (solar export at night)
        ),
        (window(c12=350.0), {"typical": np.full((1, 24), 100.0)}, {"spike_history": [12]}),
    ],
)
def test_rules_fire_where_they_should(values, kwargs, expected) -> None:
    if "spike_history" in expected:
        # the day's median is high enough that only the history sees the spike
        kwargs = kwargs | {"config": VeeConfig(spike_day_factor=4.0)}
    assert fired(values, **kwargs) == expected


@pytest.mark.parametrize(
    ("status", "rule"),
    [
        (Quality.METER_DATA_NOT_VALID, "meter_status"),
        (Quality.METER_CRITICAL_ERROR, "meter_status"),
        (Quality.LARGE_CLOCK_CORRECTION, "clock_correction"),
        (Quality.METER_POWER_DOWN, None),
        (Quality.PARTIAL, "partial"),
        (Quality.REGISTER_ROLLOVER, "register_rollover"),
    ],
)
def test_status_bits(status: Quality, rule: str | None) -> None:
    q = np.zeros((1, 26), dtype=np.int64)
    q[0, 8] = int(status)
    assert fired(window(), q) == ({rule: [8]} if rule else {})


def test_structural_findings_and_reasons() -> None:
    dup = np.zeros((1, 26), dtype=bool)
    dup[0, 3] = True
    checks = check_meter(
        window(c9=900.0),
        np.zeros((1, 26), dtype=np.int64),
        due=np.ones((1, 26), dtype=bool),
        config=VeeConfig(),
        duplicate=dup,
        off_grid=dup,
    )
    assert set(checks.masks) == {"duplicate", "off_grid", "spike_day"}
    assert checks.reasons(0, 9)["spike_day"].startswith("900 > 3.0 × day median")
    assert checks.reasons(0, 4) == {}


def test_runs() -> None:
    assert run_lengths(np.array([[1, 1, 0, 1, 1, 1, 0]], dtype=bool)).tolist() == [
        [2, 2, 0, 3, 3, 3, 0]
    ]
    assert equal_runs(np.array([[1.0, 2.0, 2.0, 2.0, np.nan, 3.0]])).tolist() == [
        [1, 3, 3, 3, 0, 1]
    ]


@pytest.mark.parametrize(
    ("meter", "ct", "vt", "expected"),
    [("0.2S", "0.2S", "0.2", 0.6), ("0.5S", None, None, 0.5), (None, None, None, 2.0)],
)
def test_error_bound_from_accuracy_classes(meter, ct, vt, expected) -> None:
    assert meter_error_pct(meter, ct, vt, 2.0) == pytest.approx(expected)


def test_divergence_flags_both_meters_beyond_the_tolerance() -> None:
    p = window()
    b = p * np.where(np.arange(26) == 10, 1.02, 1.005)
    cfg, shape = VeeConfig(), p.shape
    from cgm.vee.rules import Checks

    cp, cb = Checks(shape), Checks(shape)
    check_divergence(p, b, np.array([1.2]), cfg, cp, cb)
    assert np.flatnonzero(cp.masks["backup_divergence"][0]).tolist() == [10]
    assert np.flatnonzero(cb.masks["backup_divergence"][0]).tolist() == [10]


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_interpolation_is_exact_on_a_ramp(n: int) -> None:
    ramp = 5.0 + 3.0 * np.arange(n + 2)
    assert est.interpolate(ramp[0], ramp[-1], n) == pytest.approx(ramp[1:-1], abs=1e-12)


def test_fill_orders_methods_and_leaves_what_it_cannot() -> None:
    cfg = VeeConfig()
    known = 10.0 + np.arange(26.0)
    need = np.zeros(26, dtype=bool)
    known[[3, 10, 11, 12, 13, 14]] = np.nan
    need[[3, 10, 11, 12, 13, 14]] = True
    typ = np.full(26, 7.0)
    out = est.fill(known, need, cfg, typical=typ)
    # The flat curve anchored on both neighbours follows the ramp: exact, like a line.
    assert out_methods(out) == {est.TYPICAL_ANCHORED}
    cols = (3, 10, 11, 12, 13, 14)
    assert [out[c].value for c in cols] == pytest.approx([13, 20, 21, 22, 23, 24])
    assert out[3].inputs["anchor_left"] == pytest.approx(12 / 7)
    plain = est.fill(known, need, VeeConfig(typical_anchor=False), typical=typ)
    assert out_methods(plain) == {est.TYPICAL} and plain[12].value == 7.0
    first = est.fill(known, need, VeeConfig(interpolate_max_hours=1), typical=typ)
    assert first[3].method == est.INTERPOLATION and first[3].value == pytest.approx(13.0)
    assert first[12].method == est.TYPICAL_ANCHORED
    scada = est.fill(known, need, cfg, scada=lambda c: est.Estimate(1.5, est.SCADA), typical=typ)
    assert {e.method for e in scada.values()} == {est.SCADA}
    # no typical curve: the bounded 5 h gap falls back to interpolation; an open one stays
    assert out_methods(est.fill(known, need, cfg)) == {est.INTERPOLATION}
    open_gap = known.copy()
    open_gap[20:] = np.nan
    need2 = np.zeros(26, dtype=bool)
    need2[20:25] = True
    assert est.fill(open_gap, need2, cfg) == {}


def out_methods(out: dict[int, est.Estimate]) -> set[str]:
    return {e.method for e in out.values()}


def test_register_scaling_keeps_the_shape_and_matches_the_advance() -> None:
    known = np.full(26, 10.0)
    need = np.zeros(26, dtype=bool)
    known[5:11], need[5:11] = np.nan, True
    typ = np.linspace(1, 2, 26)
    regs = lambda a, b: (60.0, {})  # noqa: E731
    out = est.fill(known, need, VeeConfig(typical_anchor=False), typical=typ, registers=regs)
    vals = np.array([out[c].value for c in range(5, 11)])
    assert vals.sum() == pytest.approx(60.0)
    assert vals / vals[0] == pytest.approx(typ[5:11] / typ[5])
    anchored = est.fill(known, need, VeeConfig(), typical=typ, registers=regs)
    assert sum(e.value for e in anchored.values()) == pytest.approx(60.0)


def test_registers_scale_short_gaps_too() -> None:
    """A 1 h gap bracketed by snapshots is the register advance itself; a 2 h gap sums to
    it, shared in the curve's proportions; without a curve the line is scaled."""
    known = np.full(26, 10.0)
    typ = np.linspace(1, 2, 26)
    need = np.zeros(26, dtype=bool)
    known[7], need[7] = np.nan, True
    seen = []

    def regs(a: int, b: int) -> tuple[float, dict]:
        seen.append((a, b))
        return 12.5, {"register_meter_id": 9}

    out = est.fill(known, need, VeeConfig(), typical=typ, registers=regs)
    assert seen == [(7, 8)]
    assert out[7].value == pytest.approx(12.5) and out[7].method == est.TYPICAL_REGISTERS
    assert out[7].inputs["register_meter_id"] == 9
    known[8], need[8] = np.nan, True
    out = est.fill(known, need, VeeConfig(), typical=typ, registers=regs)
    vals = np.array([out[7].value, out[8].value])
    shape = est.fill(known, need, VeeConfig(), typical=typ)
    assert vals.sum() == pytest.approx(12.5)
    assert vals[1] / vals[0] == pytest.approx(shape[8].value / shape[7].value)
    line = est.fill(known, need, VeeConfig(), registers=regs)
    assert {e.method for e in line.values()} == {est.INTERPOLATION_REGISTERS}
    assert line[7].value + line[8].value == pytest.approx(12.5)
    # interpolation first (interpolate_max_hours) is scaled as well
    first = est.fill(known, need, VeeConfig(interpolate_max_hours=2), typical=typ, registers=regs)
    assert first[7].method == est.INTERPOLATION_REGISTERS


def test_anchor_from_one_side_relaxes_towards_the_curve() -> None:
    known = np.full(26, 20.0)  # measured at twice the typical level
    typ = np.full(26, 10.0)
    known[20:], need = np.nan, np.zeros(26, dtype=bool)
    need[20:25] = True
    out = est.fill(known, need, VeeConfig(anchor_decay=0.5), typical=typ)
    assert [out[c].value for c in range(20, 23)] == pytest.approx([15.0, 12.5, 11.25])
    assert out[20].inputs["anchor_left"] == 2.0 and "anchor_right" not in out[20].inputs


def test_power_integration() -> None:
    t = np.arange(-900, 4500, 300, dtype=float)
    assert est.integrate_power(t, np.full(len(t), 120.0), 0, 3600, 900) == pytest.approx(120.0)
    ramp = 100 + t / 36  # 100 kW at the start, 200 kW at the end: mean 150
    assert est.integrate_power(t, ramp, 0, 3600, 900) == pytest.approx(150.0)
    holey = np.delete(t, [5, 6, 7, 8])  # a 25-minute hole
    assert est.integrate_power(holey, np.full(len(holey), 1.0), 0, 3600, 900) is None
    assert est.integrate_power(t[t > 100], np.ones(int((t > 100).sum())), 0, 3600, 900) is None


def test_typical_curve_weighted_by_recency() -> None:
    hist = np.array([[[4.0] * 26, [100.0] * 26, [1.0] * 26]])
    hist[0, 2, 0] = np.nan  # a missing neighbour hour does not make the day unusable
    usable = np.array([[True, False, True]])
    curve, used = typical_curves(hist, usable, "weighted", decay=0.5, core=slice(1, 25))
    assert used.tolist() == [[True, False, True]]
    assert curve[0, 5] == pytest.approx((4.0 + 0.5 * 1.0) / 1.5)
    assert curve[0, 0] == 4.0


def test_typical_curve_median_mean_and_usable_days() -> None:
    hist = np.array([[[1.0] * 24, [3.0] * 24, [100.0] * 24, [2.0] * 24]])
    usable = np.array([[True, True, False, True]])
    curve, used = typical_curves(hist, usable, "median")
    assert curve[0, 0] == 2.0 and used.tolist() == [[True, True, False, True]]
    curve, _ = typical_curves(hist, usable, "mean", max_days=2)
    assert curve[0, 0] == 2.0  # the two most recent usable days: 1 and 3
    incomplete = hist.copy()
    incomplete[0, 1, 5] = np.nan
    _, used = typical_curves(incomplete, usable, "median")
    assert used.tolist() == [[True, False, False, True]]


@pytest.mark.parametrize(
    ("day", "kind"),
    [
        (date(2026, 3, 10), WORKING),
        (date(2026, 3, 14), SATURDAY),
        (date(2026, 3, 15), SUNDAY_HOLIDAY),
        (date(2026, 3, 23), SUNDAY_HOLIDAY),  # San José, moved to Monday (Ley Emiliani)
        (date(2026, 4, 3), SUNDAY_HOLIDAY),  # Good Friday
        (date(2026, 7, 20), SUNDAY_HOLIDAY),  # Independence Day
        (date(2026, 12, 8), SUNDAY_HOLIDAY),  # Immaculate Conception (a Tuesday)
    ],
)
def test_day_types_follow_colombian_holidays(day: date, kind: str) -> None:
    assert day_type(day) == kind


def test_same_type_days_skip_holidays() -> None:
    days = same_type_days(date(2026, 3, 24), 1)
    assert date(2026, 3, 23) not in days and days[0] == date(2026, 3, 20)
    assert date(2026, 3, 22) in same_type_days(date(2026, 3, 29), 1)  # Sunday
    assert date(2026, 3, 23) in same_type_days(date(2026, 3, 29), 1)  # holiday ≡ Sunday
