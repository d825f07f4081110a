"""The (id, channel) lookup that maps millions of readings and history rows to series."""

from __future__ import annotations

import numpy as np

from cgm.vee.inputs import _KeyTable


def test_rows_find_the_entry_they_were_made_from_in_any_order() -> None:
    ids = np.array([30, 10, 20, 10, 30])
    channels = np.array([1, 2, 1, 1, 4])
    table = _KeyTable(ids, channels)
    got = table.find(np.array([10, 30, 30, 20, 10, 99, 20]), np.array([1, 4, 1, 1, 2, 1, 3]))
    # positions in the arrays given, not in the sorted table; unknown keys -1
    assert got.tolist() == [3, 4, 0, 2, 1, -1, -1]


def test_an_empty_table_finds_nothing() -> None:
    table = _KeyTable(np.array([], dtype=np.int64), np.array([], dtype=np.int64))
    assert table.find(np.array([1, 2]), np.array([1, 1])).tolist() == [-1, -1]
