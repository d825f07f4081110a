"""The collector's garbage-collector pacing is confined to the cycles that run."""

import gc

from cgm.collection.gcpace import YOUNG, cycle_pace


def test_thresholds_restored_after_overlapping_cycles() -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        with cycle_pace():
            assert gc.get_threshold() == (YOUNG, 10, 10)
            with cycle_pace():  # an on-demand cycle during the scheduled one
                pass
            assert gc.get_threshold() == (YOUNG, 10, 10)  # the first cycle still runs
        assert gc.get_threshold() == (700, 10, 10)
    finally:
        gc.set_threshold(*before)


def test_restored_when_the_cycle_raises_and_disabled_collector_left_alone() -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        try:
            with cycle_pace():
                raise RuntimeError("a bug in a cycle")
        except RuntimeError:
            pass
        assert gc.get_threshold() == (700, 10, 10)
        gc.set_threshold(0, 10, 10)  # a process that disabled automatic collection
        with cycle_pace():
            assert gc.get_threshold() == (0, 10, 10)
        assert gc.get_threshold() == (0, 10, 10)
    finally:
        gc.set_threshold(*before)
