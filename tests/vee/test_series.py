"""What VEE settles: one series per frontier and channel that any of its active meters
measures, each with its principal and backup meter (0 where that meter does not measure
the channel), their factors to primary units, the divergence tolerance from the accuracy
classes of both chains, and the frontier's capacity."""

from __future__ import annotations

import numpy as np
import pytest

from cgm.vee.config import VeeConfig
from cgm.vee.inputs import load_series
from tests.vee.conftest import make_frontier

ALL = ("active_import", "active_export", "reactive_import", "reactive_export")


async def test_series_meters_factors_tolerances_and_capacity(conn) -> None:
    cfg = VeeConfig(divergence_factor=1.5)
    # Both meters on every channel: meter 0.2S + CT 0.2S + VT 0.2 on active channels
    # (0.6 % a chain), meter 2 + 0.2S + 0.2 on reactive ones (2.4 %).
    full = await make_frontier(conn, ct=100.0, vt=1.0, adjustment=1.02, capacity_mva=2.0,
                               channels=ALL)  # fmt: skip
    # The backup also measures reactive import, with a class-0.5S meter and no transformers.
    mixed = await make_frontier(conn, vt=2.0)
    await conn.execute(
        """UPDATE meter SET channels = '{active_import,reactive_import}',
                            accuracy_active = '0.5S', ct_accuracy = NULL, vt_accuracy = NULL
           WHERE id = %s""",
        (mixed.backup,),
    )
    # No backup; and no principal.
    alone = await make_frontier(conn)
    await conn.execute("UPDATE meter SET active = false WHERE id = %s", (alone.backup,))
    orphan = await make_frontier(conn, channels=("reactive_export",))
    await conn.execute("UPDATE meter SET active = false WHERE id = %s", (orphan.principal,))
    await conn.commit()

    s = await load_series(conn, cfg, [orphan.id, alone.id, mixed.id, full.id])
    got = {
        (int(f), int(c)): (
            int(s.meter["principal"][i]),
            int(s.meter["backup"][i]),
            float(s.factor["principal"][i]),
            float(s.factor["backup"][i]),
            round(float(s.tolerance_pct[i]), 9),
            float(s.capacity_kwh[i]),
            s.code[i],
        )
        for i, (f, c) in enumerate(zip(s.frontier_id, s.channel, strict=True))
    }
    nan = float("nan")
    want = {
        **{
            (full.id, c): (full.principal, full.backup, 102.0, 102.0, 1.5 * e, 2000.0, full.code)
            for c, e in ((1, 1.2), (2, 1.2), (3, 4.8), (4, 4.8))
        },
        (mixed.id, 1): (mixed.principal, mixed.backup, 2.0, 2.0, 1.5 * 1.1, nan, mixed.code),
        # The principal does not measure reactive import, but its chain's bound still counts.
        (mixed.id, 3): (0, mixed.backup, nan, 2.0, 1.5 * 4.4, nan, mixed.code),
        (alone.id, 1): (alone.principal, 0, 1.0, nan, 1.5 * 0.6, nan, alone.code),
        (orphan.id, 4): (0, orphan.backup, nan, 1.0, 1.5 * 2.4, nan, orphan.code),
    }
    assert sorted(got) == sorted(want)
    for key, row in want.items():
        assert got[key] == pytest.approx(row, nan_ok=True), key
    assert list(s.frontier_id) == sorted(s.frontier_id)  # by frontier, then channel
    keys = zip(s.frontier_id.tolist(), s.channel.tolist(), strict=True)
    assert s.index == {k: i for i, k in enumerate(keys)}
    assert s.channel.dtype == np.int16 and s.meter["backup"].dtype == np.int64


async def test_no_active_meter_no_series(conn) -> None:
    f = await make_frontier(conn)
    await conn.execute("UPDATE meter SET active = false WHERE frontier_id = %s", (f.id,))
    await conn.commit()
    s = await load_series(conn, VeeConfig(), [f.id])
    assert len(s) == 0 and s.index == {} and s.code == []
