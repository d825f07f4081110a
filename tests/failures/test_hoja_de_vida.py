"""The hoja de vida: entries by level-2 users only, validation, Table 4 due dates, the cable
error, and the JSON and PDF exports (the PDF read back by pypdf and its first page rendered by
PDFium through pypdfium2, a wheel: no system program needed)."""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path

import pypdfium2
import pytest
from pypdf import PdfReader

from cgm.cli import main
from cgm.hoja_de_vida import CableError, cable_error, maintenance_due

from .test_table5 import PASSWORD, _rows, _setup, cli_db  # noqa: F401 - the fixture


def test_table4_due_dates_and_notices() -> None:
    last = date(2024, 5, 31)
    assert maintenance_due(1, last, date(2020, 1, 1), date(2025, 1, 1)) == {
        "interval_years": 2, "last_done": "2024-05-31", "next_due": "2026-05-31",
        "notice": None}  # fmt: skip
    due = lambda pt, today: maintenance_due(pt, last, date(2020, 1, 1), today)  # noqa: E731
    # Six months before 31 May is 30 Nov (31 Nov does not exist); three months, 28 Feb.
    assert due(1, date(2025, 11, 29))["notice"] is None
    assert due(1, date(2025, 11, 30))["notice"] == "6_months"
    assert due(1, date(2026, 2, 27))["notice"] == "6_months"
    assert due(1, date(2026, 2, 28))["notice"] == "3_months"
    assert due(1, date(2026, 5, 30))["notice"] == "3_months"
    assert due(1, date(2026, 5, 31))["notice"] == "overdue"
    assert due(2, date(2026, 5, 31))["next_due"] == "2028-05-31"
    assert due(3, date(2026, 5, 31))["interval_years"] == 4
    assert due(4, date(2026, 5, 31))["next_due"] == "2034-05-31"
    assert due(5, date(2026, 5, 31))["interval_years"] == 10
    # Never maintained: counted from the start of operation.
    assert maintenance_due(2, None, date(2020, 2, 29), date(2021, 1, 1))["next_due"] == "2024-02-29"


def test_cable_error_from_physics() -> None:
    # 50 m of 2.5 mm² copper, 2 VA burden at 69.28 V: R = 0.0178·100/2.5 = 0.712 Ω,
    # I = 0.02887 A, drop 0.02055 V = 0.0297 % of 69.28 V.
    r = cable_error(CableError(length_m=50, section_mm2=2.5, burden_va=2))
    assert r["resistance_ohm"] == pytest.approx(0.712)
    assert r["error_pct"] == pytest.approx(0.02966, rel=1e-3) and r["within_limit"]
    long = cable_error(CableError(length_m=200, section_mm2=1.5, burden_va=5))
    assert long["error_pct"] > 0.1 and not long["within_limit"]


def test_cli_add_show_export_json_and_pdf(cli_db: str, tmp_path: Path, capsys) -> None:  # noqa: F811
    code = _setup(cli_db)
    os.environ["CGM_TEST_PW"] = PASSWORD
    auth = ["--user", "ana", "--password-env", "CGM_TEST_PW"]

    def add(section: str, day: str, *pairs: str, user: list[str] = auth) -> int:
        sets = [x for p in pairs for x in ("--set", p)]
        return main(["hoja", "add", section, "--frontier", code, "--date", day, *sets, *user])

    # Level 1 may read but not write.
    assert add("note", "2026-01-02", "text=hola", user=["--user", "lee",
               "--password-env", "CGM_TEST_PW"]) == 2  # fmt: skip
    for ph in "ABC":
        assert add("equipment", "2025-01-10", "kind=ct", f"phase={ph}", f"serial=CT-{ph}1",
                   "ratio=200/5", "accuracy_class=0.2S", "certificate=LAB-77") == 0  # fmt: skip
    assert add("equipment", "2025-01-10", "kind=modem", "serial=GSM-9") == 0
    assert add("seal", "2025-01-10", "location=meter cover", "serial=S-0042",
               "action=installed", "by=J. Pérez") == 0  # fmt: skip
    assert add("seal", "2026-02-01", "location=meter cover", "serial=S-0042",
               "action=removed", "by=M. Ruiz") == 0  # fmt: skip
    assert add("calibration", "2024-12-01", "element_serial=CT-A1", "laboratory=LabMed",
               "certificate=C-1", "result=conforme") == 0  # fmt: skip
    assert add("verification", "2025-01-11", "kind=initial", "by=Verificador SA",
               "result=conforme") == 0  # fmt: skip
    assert add("maintenance", "2025-06-01", "status=done", "description=limpieza") == 0
    assert add("cable_error", "2025-01-10", "length_m=50", "section_mm2=2.5",
               "burden_va=2") == 0  # fmt: skip
    assert add("adjustment_factor", "2025-01-10", "factor=1.002",
               "support=estudio de perdidas 2025") == 0  # fmt: skip
    assert add("note", "2026-01-02", "text=cambio de tapa, sello S-0042 retirado") == 0
    capsys.readouterr()
    # Bad entries are refused with a clear error, nothing stored.
    assert add("seal", "2026-01-02", "location=x", "serial=S", "action=lost", "by=y") == 2
    assert "action" in capsys.readouterr().err
    assert add("cable_error", "2026-01-02", "length_m=-5", "section_mm2=2.5",
               "burden_va=2") == 2  # fmt: skip
    assert len(_rows(cli_db, "SELECT 1 FROM hoja_entry")) == 12
    assert {r[0] for r in _rows(cli_db, "SELECT actor FROM hoja_entry")} == {"cli:ana"}

    assert main(["hoja", "show", "--frontier", code, "--section", "seal"]) == 0
    seals = json.loads(capsys.readouterr().out)
    assert [(s["serial"], s["action"], s["by"]) for s in seals] == [
        ("S-0042", "installed", "J. Pérez"), ("S-0042", "removed", "M. Ruiz")]  # fmt: skip

    # Corrections: a new entry referencing the original (level 2 only); the original stays.
    (maint,) = _rows(cli_db, "SELECT id FROM hoja_entry WHERE section = 'maintenance'")
    (note,) = _rows(cli_db, "SELECT id FROM hoja_entry WHERE section = 'note'")
    fix = ["hoja", "correct", str(maint[0]), "--frontier", code, "--reason", "wrong date",
           "--date", "2025-07-01", "--set", "status=done", "--set", "description=limpieza"]
    assert main([*fix, "--user", "lee", "--password-env", "CGM_TEST_PW"]) == 2
    assert main([*fix, *auth]) == 0
    assert f"entry {maint[0]} corrected by entry" in capsys.readouterr().out
    assert main([*fix, *auth]) == 2  # corrected once: correct the correction instead
    assert "already corrected" in capsys.readouterr().err
    assert main(["hoja", "void", str(note[0]), "--frontier", code, "--reason",
                 "written on the wrong frontier", *auth]) == 0  # fmt: skip
    assert len(_rows(cli_db, "SELECT 1 FROM hoja_entry")) == 14

    out_json, out_pdf = tmp_path / "hv.json", tmp_path / "hv.pdf"
    assert main(["hoja", "export", "--frontier", code, "--json", str(out_json),
                 "--pdf", str(out_pdf)]) == 0  # fmt: skip
    rec = json.loads(out_json.read_text())
    assert [e["phase"] for e in rec["equipment"] if e["kind"] == "ct"] == ["A", "B", "C"]
    assert rec["cable_error"][0]["result"]["within_limit"] is True
    assert rec["maintenance_due"]["last_done"] == "2025-07-01"  # the corrected date
    assert rec["maintenance_due"]["next_due"] == "2029-07-01"  # point type 2: 4 years
    assert [(m["date"], m["entry_status"]) for m in rec["maintenance"]] == [
        ("2025-06-01", "corrected"), ("2025-07-01", "current")]  # fmt: skip
    assert [(n["entry_status"], n.get("reason")) for n in rec["note"]] == [
        ("voided", None), ("void", "written on the wrong frontier")]  # fmt: skip
    assert rec["adjustment_factor"][0]["factor"] == 1.002
    assert len(rec["registry_meters"]) == 2

    text = "".join(p.extract_text() for p in PdfReader(out_pdf).pages)
    for expected in (f"Hoja de vida de la frontera {code}", "CT-B1", "S-0042", "M. Ruiz",
                     "Pérez", "LabMed", "2029-07-01", "estudio de perdidas", "voided",
                     "written on the wrong"):  # fmt: skip
        assert expected in text, expected
    page = pypdfium2.PdfDocument(out_pdf)[0].render(scale=60 / 72).to_pil().convert("L")
    inked = sum(page.histogram()[:128]) / (page.width * page.height)
    assert inked > 0.005, inked  # a page with content, not a blank
    keep = os.environ.get("CGM_KEEP_RENDER")
    if keep:
        page.save(keep)
