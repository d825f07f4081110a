"""The hoja de vida as a readable PDF (fpdf2): one heading per section, a table per list.

Every entry shows its id and ``entry_status`` (current, corrected, voided, void); a correction
shows the entry it ``corrects`` and its ``reason``, so the original and its correction read
side by side, as in the JSON export.

Core fonts only (no font files to ship); text outside Latin-1 is replaced, never dropped
silently: a ``?`` shows where a character could not be drawn.
"""

from __future__ import annotations

from typing import Any

from fpdf import FPDF

TITLES = {
    "registry_meters": "Medidores registrados",
    "equipment": "Equipos (medidores, TC, TT por fase, comunicaciones)",
    "seal": "Sellos",
    "calibration": "Calibraciones y certificados",
    "verification": "Verificaciones",
    "maintenance": "Mantenimientos",
    "cable_error": "Error por cableado (art. 9.1.1.8, limite 0,1 %)",
    "adjustment_factor": "Soporte del factor de ajuste",
    "note": "Anotaciones",
    "level2_log": "Accesos de nivel 2",
}
_SKIP = {"recorded_at", "activities"}  # ids stay: corrections refer to them


def _t(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        value = ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value).encode("latin-1", "replace").decode("latin-1")


def render(record: dict[str, Any]) -> bytes:
    f = record["frontier"]
    pdf = FPDF(orientation="L", format="A4")
    pdf.set_auto_page_break(auto=True, margin=12)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 15)
    pdf.cell(0, 9, _t(f"Hoja de vida de la frontera {f['code']}"), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=9)
    pdf.multi_cell(
        0, 5,
        _t(f"{f['name']} - tipo de punto {f['point_type']}, nivel de tension "
           f"{f['voltage_level']}, en operacion desde {f['operation_start']}, factor de "
           f"ajuste {f['adjustment_factor']}. Generada {record['generated_at']}."),
        new_x="LMARGIN", new_y="NEXT",
    )  # fmt: skip
    due = record["maintenance_due"]
    pdf.multi_cell(
        0, 5,
        _t(f"Proximo mantenimiento (Tabla 4, cada {due['interval_years']} anos): "
           f"{due['next_due']}; ultimo: {due['last_done'] or 'ninguno'}; aviso: "
           f"{due['notice'] or '-'}"),
        new_x="LMARGIN", new_y="NEXT",
    )  # fmt: skip
    for key, title in TITLES.items():
        rows = record.get(key) or []
        pdf.ln(2)
        pdf.set_font("Helvetica", "B", 11)
        pdf.cell(0, 7, _t(f"{title} ({len(rows)})"), new_x="LMARGIN", new_y="NEXT")
        if not rows:
            pdf.set_font("Helvetica", "I", 8)
            pdf.cell(0, 5, "sin registros", new_x="LMARGIN", new_y="NEXT")
            continue
        cols = [c for c in rows[0] if c not in _SKIP]
        for r in rows[1:]:
            cols += [c for c in r if c not in _SKIP and c not in cols]
        pdf.set_font("Helvetica", size=7)
        with pdf.table(text_align="LEFT", line_height=4) as table:
            head = table.row()
            for c in cols:
                head.cell(_t(c))
            for r in rows:
                line = table.row()
                for c in cols:
                    line.cell(_t(r.get(c, "")))
    return bytes(pdf.output())
