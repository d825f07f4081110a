"""XM's published reading message (ArrayOfReadingReportItem): shape, many frontiers in one
request, daily-hourly and monthly, what the principal and backup items carry."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import date, timedelta

import psycopg
import pytest

from cgm.localtime import hour_starts
from cgm.reporting.asic import xm_xml
from cgm.reporting.asic.monthly import build_month
from cgm.storage import SettledValue, write_settled
from simulators.asic.server import _xml_item

from .conftest import DAY, backup_readings, make_frontier, rows, settle, value

# The shape of XM's one public example (note on monthly reporting under CREG 038, 2016),
# two items: a daily-hourly principal and a monthly embedded frontier's backup.
PUBLISHED = b"""<?xml version="1.0" encoding="utf-8"?>
<ArrayOfReadingReportItem xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
                          xmlns:xsd="http://www.w3.org/2001/XMLSchema">
  <ReadingReportItem>
    <BorderCode>Frt03003</BorderCode>
    <IsBackup>false</IsBackup>
    <StartDate>2016-05-16T00:00:00</StartDate>
    <ReadingInterval>60</ReadingInterval>
    <ReadingCount>24</ReadingCount>
    <Readings>""" + b"".join(b"<double>%d.25</double>" % h for h in range(24)) + b"""</Readings>
  </ReadingReportItem>
  <ReadingReportItem>
    <BorderCode>Frt03004</BorderCode>
    <IsBackup>true</IsBackup>
    <StartDate>2016-05-01T00:00:00</StartDate>
    <ReadingInterval>60</ReadingInterval>
    <ReadingCount>1</ReadingCount>
    <Readings><double>1520.5</double></Readings>
  </ReadingReportItem>
</ArrayOfReadingReportItem>"""


def _shape(el: ET.Element) -> tuple:
    """Tags and nesting, with the number of <double> children (values aside)."""
    return (el.tag, tuple(_shape(c) for c in el if c.tag != "double"),
            sum(1 for c in el if c.tag == "double"))  # fmt: skip


def test_message_has_the_published_shape_and_round_trips() -> None:
    items = xm_xml.parse(PUBLISHED)
    assert items[0] == xm_xml.ReportItem(
        "Frt03003", False, date(2016, 5, 16), tuple(h + 0.25 for h in range(24))
    )
    assert items[1] == xm_xml.ReportItem("Frt03004", True, date(2016, 5, 1), (1520.5,))
    built = xm_xml.message(items)
    assert _shape(ET.fromstring(built)) == _shape(ET.fromstring(PUBLISHED))
    assert xm_xml.parse(built) == items
    assert b"<StartDate>2016-05-16T00:00:00</StartDate>" in built
    assert b"<double>0.25</double>" in built and b"<double>1520.5</double>" in built
    # The simulator's own parser (not the CGM's) reads both the same way.
    for el, it in zip(ET.fromstring(built), items, strict=True):
        got = _xml_item(el)
        assert (got["BorderCode"], got["IsBackup"], got["Readings"]) == (
            it.border_code, it.is_backup, list(it.readings))  # fmt: skip


def test_bad_items_are_refused() -> None:
    with pytest.raises(ValueError, match="23 readings"):
        xm_xml.ReportItem("Frt1", False, DAY, (1.0,) * 23)
    with pytest.raises(ValueError, match="not a number"):
        xm_xml.ReportItem("Frt1", False, DAY, (float("nan"),) * 24)
    wrong_count = PUBLISHED.replace(b"<ReadingCount>1<", b"<ReadingCount>24<")
    with pytest.raises(ValueError, match="ReadingCount 24"):
        xm_xml.parse(wrong_count)
    assert "ReadingCount" in _xml_item(ET.fromstring(wrong_count)[1])["_error"]
    swapped = PUBLISHED.replace(b"<IsBackup>true</IsBackup>", b"<IsBackup>yes</IsBackup>")
    assert "IsBackup" in _xml_item(ET.fromstring(swapped)[1])["_error"]


async def test_many_frontiers_in_one_request_accepted(db, asic, make_reporter) -> None:
    sim, _ = asic
    frs = [await make_frontier(db) for _ in range(3)]
    for fr in frs:
        await settle(db, fr, estimate={5: "typical_curve"})
        await backup_readings(db, fr)
        sim.known_frontiers.add(fr.code)
    reporter = make_reporter(asic_format="xm_xml")
    result = await reporter.report_day(DAY, [f.code for f in frs])
    assert len(result.sent) == 6 and not result.failed
    (msg,) = sim.messages.values()  # one request for every frontier and both meters
    assert msg.zip_name.endswith(".xml")
    got = {(d["BorderCode"], d["IsBackup"]): d for d in msg.documents.values()}
    assert set(got) == {(f.code, b) for f in frs for b in (False, True)}
    fr = frs[0]
    assert got[(fr.code, False)]["Readings"] == [value(1, p) for p in range(1, 25)]
    backup = got[(fr.code, True)]["Readings"]
    assert all(abs(v - value(1, p) * 1.01) < 1e-6 for p, v in enumerate(backup, 1))
    assert got[(fr.code, False)]["StartDate"] == "2026-03-01T00:00:00"
    assert await reporter.poll(rounds=20, interval_s=0.05) == 0
    stored = await rows(
        db, "SELECT file_name, state, content->'periodosEstimados' FROM asic_document "
        "WHERE frontier_id = %s ORDER BY role DESC", fr.id)  # fmt: skip
    # The estimated hour, which the XML cannot carry, is in the stored delivery record.
    assert stored == [
        (f"{fr.code}_P_20260301", "success",
         [{"serie": "lecturas", "periodos": [5], "metodo": "typical_curve"},
          {"serie": "lecturasReactiva", "periodos": [5], "metodo": "typical_curve"}]),
        (f"{fr.code}_R_20260301", "success", []),
    ]  # fmt: skip
    # Sent once: a second run finds every item unchanged.
    again = await reporter.report_day(DAY, [f.code for f in frs])
    assert again.sent == [] and len(again.unchanged) == 6 and len(sim.messages) == 1


async def test_principal_marks_backup_hours_backup_waits_for_its_own(db, make_reporter) -> None:
    fr = await make_frontier(db)
    await settle(db, fr)
    # Hours 8 and 9 of the settled series were taken from the backup meter.
    starts = hour_starts(DAY)
    async with await psycopg.AsyncConnection.connect(db) as c:
        await write_settled(
            c, [SettledValue(fr.id, 1, starts[p - 1], value(1, p), "backup") for p in (8, 9)],
            actor="vee", reason="principal failed")  # fmt: skip
    await backup_readings(db, fr, skip=(9,))
    build = await make_reporter(asic_format="xm_xml").build(DAY, [fr.code])
    (p,) = build.documents  # the backup lacks hour 9 of its own: no backup item yet
    assert p.content["periodosRespaldo"] == [{"serie": "lecturas", "periodos": [8, 9]}]
    assert build.partial == {
        fr.code: f"backup meter {fr.backup}: lecturas 23/24 own validated readings, "
        "lecturasReactiva 23/24 own validated readings"
    }
    await backup_readings(db, fr)
    build = await make_reporter(asic_format="xm_xml").build(DAY, [fr.code])
    b = {d.role: d for d in build.documents}["backup"]
    assert b.item.is_backup and abs(b.item.readings[8] - value(1, 9) * 1.01) < 1e-6


async def test_monthly_items_complete_months_only(db, asic) -> None:
    sim, _ = asic
    full, short = await make_frontier(db), await make_frontier(db)
    days = [date(2026, 2, 1) + timedelta(days=n) for n in range(28)]
    for d in days:
        await settle(db, full, d, channels=(1,))
        await backup_readings(db, full, d)
        await settle(db, short, d, channels=(1,), periods=24 if d.day < 28 else 23)
    async with await psycopg.AsyncConnection.connect(db) as c:
        items, why = await build_month(c, date(2026, 2, 15), [full.code, short.code])
    day_total = sum(value(1, p) for p in range(1, 25))
    assert [(i.border_code, i.is_backup, i.start) for i in items] == [
        (full.code, False, date(2026, 2, 1)), (full.code, True, date(2026, 2, 1))]  # fmt: skip
    assert items[0].readings == (28 * day_total,)
    assert abs(items[1].readings[0] - 28 * day_total * 1.01) < 1e-3
    assert why == {short.code: "settled series 671/672 hours"}
    body = xm_xml.message(items)
    assert body.count(b"<ReadingCount>1</ReadingCount>") == 2
    assert all("_error" not in _xml_item(el) for el in ET.fromstring(body))
