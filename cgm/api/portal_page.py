"""The portal's page: server-rendered HTML with inline SVG charts, no JavaScript at all, so
there is no build step and nothing to keep in sync with the API's JSON.

It shows a unit's meters (owned and associated), a meter's consumption by day (hours), month
(days) or year (months) with estimated energy drawn apart (orange, hatched, class
``estimated``), the lookup step of the shared-meter association (is this client number
already registered, by whom, with which meters), and, for service users, the status report.
"""

from __future__ import annotations

from datetime import date, timedelta
from html import escape
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse

from cgm.api.app import FIRST_DAY, LAST_DAY, Reader, _yesterday
from cgm.api.portal import PREFIX, _unit_code
from cgm.portal import store
from cgm.portal.access import unit_of
from cgm.portal.consumption import consumption, find_meter
from cgm.portal.status import status_report

router = APIRouter(prefix=PREFIX)
View = Literal["day", "month", "year"]
CSS = """body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse}
td,th{border:1px solid #bbb;padding:.25em .6em;text-align:left}th{background:#eee}
.measured{fill:#2b6cb0}.estimated{fill:url(#hatch)}.legend span{margin-right:1.5em}
.sw{display:inline-block;width:1em;height:1em;vertical-align:middle;margin-right:.3em}"""


def _range(view: View, day: date) -> tuple[date, date, str]:
    if view == "day":
        return day, day, "hourly"
    if view == "month":
        first = day.replace(day=1)
        nxt = (first + timedelta(days=32)).replace(day=1)
        return first, nxt - timedelta(days=1), "daily"
    return day.replace(month=1, day=1), day.replace(month=12, day=31), "monthly"


def _chart(data: dict[str, Any]) -> str:
    """Stacked bars: measured below, estimated above, one bar per hour/day/month."""
    if data["resolution"] == "hourly":
        bars = [
            (str(v["hour_period"]), 0.0 if v["estimated"] else v["value"],
             v["value"] if v["estimated"] else 0.0)
            for v in data["values"]
        ]  # fmt: skip
    else:
        bars = [
            (p["period"][-2:], p["value"] - p["estimated_value"], p["estimated_value"])
            for p in data["values"]
        ]
    if not bars:
        return "<p>No settled consumption in this period.</p>"
    top = max(m + e for _, m, e in bars) or 1.0
    w, h, bw = 720, 220, 720 / len(bars)
    parts = [
        f'<svg id="chart" width="{w}" height="{h + 20}" role="img" '
        'aria-label="consumption chart"><defs><pattern id="hatch" width="6" height="6" '
        'patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
        '<rect width="6" height="6" fill="#f6ad55"/><line x1="0" y1="0" x2="0" y2="6" '
        'stroke="#c05621" stroke-width="3"/></pattern></defs>'
    ]
    for i, (label, measured, estimated) in enumerate(bars):
        x = i * bw + 1
        hm, he = measured / top * h, estimated / top * h
        if hm:
            parts.append(
                f'<rect class="measured" x="{x:.1f}" y="{h - hm:.1f}" width="{bw - 2:.1f}" '
                f'height="{hm:.1f}"><title>{escape(label)}: {measured:.3f} measured</title></rect>'
            )
        if he:
            parts.append(
                f'<rect class="estimated" x="{x:.1f}" y="{h - hm - he:.1f}" '
                f'width="{bw - 2:.1f}" height="{he:.1f}"><title>{escape(label)}: '
                f"{estimated:.3f} estimated</title></rect>"
            )
        parts.append(
            f'<text x="{x + bw / 2:.1f}" y="{h + 14}" font-size="10" '
            f'text-anchor="middle">{escape(label)}</text>'
        )
    parts.append("</svg>")
    legend = (
        '<p class="legend"><span><i class="sw" style="background:#2b6cb0"></i>measured</span>'
        '<span><i class="sw" style="background:#f6ad55"></i>estimated</span></p>'
    )
    return "".join(parts) + legend


def _table(rows: list[dict[str, Any]], cols: list[str], id_: str) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(r.get(c, '')))}</td>" for c in cols) + "</tr>"
        for r in rows
    )
    return f'<table id="{id_}"><tr>{head}</tr>{body}</table>'


@router.get("/page", response_class=HTMLResponse, summary="The portal page (HTML, no JS)")
async def page(
    request: Request,
    user: Reader,
    unit: Annotated[str | None, Query()] = None,
    meter: Annotated[str | None, Query()] = None,
    view: Annotated[View, Query()] = "day",
    day: Annotated[date | None, Query(ge=FIRST_DAY, le=LAST_DAY)] = None,
    company: Annotated[str | None, Query(max_length=200)] = None,
    client_number: Annotated[str | None, Query(max_length=200)] = None,
) -> HTMLResponse:
    day = day or _yesterday()
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>cgm portal</title>"
           f"<style>{CSS}</style></head><body><h1>Consumption portal</h1>"]  # fmt: skip
    async with request.app.state.pool.connection() as conn:
        own = await unit_of(conn, user)
        if own is not None:
            code = await _unit_code(conn, own)
            if unit not in (None, code):
                raise HTTPException(403, f"this user reads for unit {code} only")
            unit = code
        if unit is None:
            units = await store.list_units(conn)
            out.append("<h2>Units</h2>")
            out.append(_table(units, ["code", "institution", "service", "name", "meters_owned",
                                      "meters_associated"], "units"))  # fmt: skip
        else:
            try:
                meters = await store.unit_meters(conn, unit)
            except store.PortalError as exc:
                raise HTTPException(404, str(exc)) from None
            out.append(f"<h2>Unit {escape(unit)}: meters</h2>")
            out.append(_table(meters, ["meter", "relation", "owner", "company", "client_number",
                                       "shared", "source", "frontier"], "meters"))  # fmt: skip
            linked = [m["meter"] for m in meters if m["frontier"]]
            meter = meter or (linked[0] if linked else None)
            if meter is not None:
                if meter not in {m["meter"] for m in meters}:
                    raise HTTPException(403, f"meter {meter} is not one of unit {unit}'s meters")
                pm = await find_meter(conn, meter)
                first, last, resolution = _range(view, day)
                try:
                    data = await consumption(conn, pm, first, last, resolution)  # type: ignore[arg-type]
                except LookupError as exc:
                    data = None
                    out.append(f"<p>{escape(str(exc))}</p>")
                links = " | ".join(
                    f'<a href="?unit={escape(unit)}&meter={escape(meter)}&view={v}'
                    f'&day={day.isoformat()}">{v}</a>'
                    for v in ("day", "month", "year")
                )
                out.append(f"<h2>Meter {escape(meter)}: {view} of {day.isoformat()}</h2>")
                out.append(f"<p>{links}</p>")
                if data is not None:
                    t = data["totals"]
                    out.append(
                        f'<p id="totals">total {t["value"]:.3f} {escape(data["units"])}; '
                        f"estimated {t['estimated_hours']} h ({t['estimated_value']:.3f}); "
                        f"missing {t['missing_hours']} h</p>"
                    )
                    out.append(_chart(data))
        out.append(
            "<h2>Shared meter: is your client number registered?</h2>"
            '<form id="lookup" method="get">'
            f'<input type="hidden" name="unit" value="{escape(unit or "")}">'
            '<label>Distribution company <input name="company"></label> '
            '<label>Client number <input name="client_number"></label> '
            "<button type=submit>Look up</button></form>"
        )
        if company and client_number:
            found = await store.lookup_client_number(conn, company, client_number)
            if found is None:
                out.append('<p id="lookup-result">Not registered: your unit can create it '
                           "(and will own it and its meters).</p>")  # fmt: skip
            else:
                out.append(
                    f'<p id="lookup-result">Already registered by unit '
                    f"{escape(found['owner'])}, meters {escape(', '.join(found['meters']))}. "
                    "Your unit can associate with any of them to read its consumption "
                    "(an administrator records it: <code>associate:</code> in the inventory)."
                    "</p>"
                )
        if own is None:
            r = await status_report(conn, day.replace(day=1), day)
            t = r["totals"]
            out.append(
                f"<h2>Status {r['first_day']} – {r['last_day']}</h2>"
                f'<p id="status-totals">{t["units_loaded"]} units loaded, '
                f"{t['units_reporting']} reporting, {t['units_not_reporting']} not reporting "
                f"({t['not_reporting_justified']} justified), indicator set "
                f"{t['indicator_set']}</p>"
            )
            cols = ["unit", "institution", "service", "justified", "will_report"]
            out.append(_table(r["not_reporting"], cols, "not-reporting"))
    out.append("</body></html>")
    return HTMLResponse("".join(out))
