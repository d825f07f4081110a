"""The annual report (art. 9.1.1.39) from a year's data."""

from __future__ import annotations

from datetime import UTC, date, datetime

import psycopg

from cgm import failures, hoja_de_vida
from cgm.reporting.annual import annual_report

from .conftest import DAY, backup_readings, make_frontier, settle


async def test_annual_report_counts_the_years_data(db, asic, make_reporter) -> None:
    sim, _ = asic
    fr, idle = await make_frontier(db), await make_frontier(db, backup=False)
    await settle(db, fr, estimate={3: "typical_curve", 4: "typical_curve"})
    await settle(db, fr, date(2025, 12, 31))  # the year before: not counted
    await backup_readings(db, fr)
    sim.known_frontiers.add(fr.code)
    reporter = make_reporter(asic_format="xm_xml")
    await reporter.report_day(DAY, [fr.code])
    assert await reporter.poll(rounds=20, interval_s=0.05) == 0
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as c:
        for element, at in (("ct", datetime(2026, 2, 1, tzinfo=UTC)),
                            ("communication", datetime(2026, 2, 3, tzinfo=UTC))):  # fmt: skip
            await failures.open_event(c, frontier=fr.code, element=element, kind="failure",
                                      started_at=at, description="x", actor="t")  # fmt: skip
        await failures.open_event(c, frontier=fr.code, element="principal", kind="theft",
                                  started_at=datetime(2026, 4, 1, tzinfo=UTC),
                                  description="meter stolen", actor="t")  # fmt: skip
        await hoja_de_vida.add_entry(c, frontier=fr.code, section="maintenance",
                                     entry_date=date(2026, 5, 1),
                                     data={"status": "done", "description": "x"},
                                     actor="t")  # fmt: skip
        rep = await annual_report(c, 2026, cgm_code="CGM0042",
                                  now=datetime(2026, 12, 31, tzinfo=UTC))  # fmt: skip
    assert rep["year"] == 2026 and rep["frontiers"] == 2
    p = rep["by_frontier"][fr.code]
    assert (p["asic_days_accepted"], p["asic_days_missing"]) == (1, 364)
    assert (p["settled_hours"], p["estimated_hours"], p["backup_hours"]) == (24, 2, 0)
    assert p["failures"] == {"ct": 1, "communication": 1} and p["thefts"] == {"principal": 1}
    assert p["hoja_de_vida"] == {"maintenance": 1}
    assert p["table5_at_year_end"]["count"] == 1  # both open at once: one failure
    assert rep["by_frontier"][idle.code]["asic_days_missing"] == 365
    t = rep["totals"]
    assert (t["failures"], t["thefts"], t["estimated_hours"]) == (2, 1, 2)
    assert t["frontiers_over_table5"] == []
