"""The portal's page: server-rendered HTML with inline SVG charts, no JavaScript at all, so
there is no build step and nothing to keep in sync with the API's JSON.

It shows a unit's meters (owned and associated), a meter's consumption by day (hours), month
(days) or year (months) with estimated energy drawn apart (orange, hatched, class
``estimated``), the shared-meter association (is this client number already registered, by
whom, with which meters; then a form to associate with any of them), the owner's forms to
edit a meter and load its invoices, and, for service users, the status report.

The forms are plain HTML forms posted to ``/page/...`` endpoints that make the same checks
as the JSON API (they call the same functions) and answer with a redirect back to the page
(post/redirect/get) or an HTML page with the refusal. A browser sends the ``Origin`` of a
form post; one from another origin is refused (403), so another site cannot make a logged-in
browser post here.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from html import escape
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel, ValidationError

from cgm.api.app import FIRST_DAY, LAST_DAY, Reader, _yesterday
from cgm.api.portal import (
    PREFIX,
    Association,
    Invoice,
    NewClientNumber,
    OwnerChange,
    _unit_code,
    add_invoice,
    associate_unit,
    change_client_owner,
    create_for_unit,
    edit_unit_meter,
    own_unit,
)
from cgm.portal import store
from cgm.portal.consumption import consumption, find_meter
from cgm.portal.status import status_report

router = APIRouter(prefix=PREFIX)
View = Literal["day", "month", "year"]
CSS = """body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse}
td,th{border:1px solid #bbb;padding:.25em .6em;text-align:left}th{background:#eee}
.measured{fill:#2b6cb0}.estimated{fill:url(#hatch)}.legend span{margin-right:1.5em}
.sw{display:inline-block;width:1em;height:1em;vertical-align:middle;margin-right:.3em}
#notice{background:#e6fffa;border:1px solid #38b2ac;padding:.5em}
.refused{background:#fff5f5;border:1px solid #e53e3e;padding:.5em}
form{margin:.5em 0}fieldset{display:inline-block;margin-right:1em}"""
NOTICES = {
    "associated": "Associated: the unit now reads the consumption of the meters chosen.",
    "edited": "Meter updated.",
    "invoice": "Invoice loaded.",
    "created": "Client number created: the unit owns it and its meters.",
    "owner": "Owner changed (logged with the reason).",
}
EDIT_FIELDS = ("smart", "shared", "invoice_access")
METER_ROWS = 3  # meter rows of the creation form (empty ones are ignored)
SOURCE_LABELS = {"electricity": "electricity", "natural_gas": "natural gas", "lpg": "LPG"}


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
    notice: Annotated[str | None, Query(max_length=40)] = None,
) -> HTMLResponse:
    day = day or _yesterday()
    unit = unit or None  # the lookup form of a page without a unit sends unit=""
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>cgm portal</title>"
           f"<style>{CSS}</style></head><body><h1>Consumption portal</h1>"]  # fmt: skip
    if notice in NOTICES:
        out.append(f'<p id="notice">{escape(NOTICES[notice])}</p>')
    async with request.app.state.pool.connection() as conn:
        own = await own_unit(conn, user)
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
                this = next(m for m in meters if m["meter"] == meter)
                can_act = own is not None or user.level >= 2
                out.append(await _meter_forms(conn, unit, this, can_act, view, day))
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
                if unit is not None and (own is not None or user.level >= 2):
                    out.append(_create_form(unit, company, client_number))
            else:
                out.append(
                    f'<p id="lookup-result">Already registered by unit '
                    f"{escape(found['owner'])}, meters {escape(', '.join(found['meters']))}. "
                    "Your unit can associate with any of them to read its consumption.</p>"
                )
                if unit is not None and unit != found["owner"] and (
                    own is not None or user.level >= 2
                ):
                    mine = {m["meter"] for m in meters}
                    out.append(_associate_form(unit, company, client_number, found, mine))
                if own is None and user.level >= 2:
                    codes = [u["code"] for u in await store.list_units(conn)]
                    out.append(_owner_form(unit, company, client_number, found["owner"], codes))
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


def _hidden(**fields: str) -> str:
    return "".join(
        f'<input type="hidden" name="{k}" value="{escape(v)}">' for k, v in fields.items()
    )


def _associate_form(
    unit: str, company: str, number: str, found: dict[str, Any], mine: set[str]
) -> str:
    boxes = "".join(
        f'<label><input type="checkbox" name="meter" value="{escape(m)}"'
        f"{' checked disabled' if m in mine else ''}> {escape(m)}"
        f"{' (already yours to read)' if m in mine else ''}</label> "
        for m in found["meters"]
    )
    return (
        f'<form id="associate" method="post" action="{PREFIX}/page/associate">'
        f"{_hidden(unit=unit, company=company, client_number=number)}"
        f"<fieldset><legend>Associate unit {escape(unit)} with</legend>{boxes}</fieldset>"
        "<button type=submit>Associate</button></form>"
    )


def _create_form(unit: str, company: str, number: str) -> str:
    """The new client number's tariff and power, and up to ``METER_ROWS`` meters."""
    options = "".join(f'<option value="{k}">{v}</option>' for k, v in SOURCE_LABELS.items())
    rows = "".join(
        f'<tr><td><input name="m{i}_number" aria-label="meter {i + 1} number"></td>'
        f'<td><select name="m{i}_source">{options}</select></td>'
        + "".join(f'<td><input type="checkbox" name="m{i}_{f}"></td>' for f in EDIT_FIELDS)
        + "</tr>"
        for i in range(METER_ROWS)
    )
    head = "".join(f"<th>{f.replace('_', ' ')}</th>" for f in EDIT_FIELDS)
    return (
        f'<form id="create" method="post" action="{PREFIX}/page/client-numbers">'
        f"{_hidden(unit=unit, company=company, client_number=number)}"
        f"<fieldset><legend>Create client number {escape(company)} {escape(number)} for "
        f"unit {escape(unit)}</legend>"
        '<label>Tariff type <input name="tariff_type" required></label> '
        '<label>Connected power (kW) <input name="connected_power_kw" inputmode="decimal">'
        f"</label><table><tr><th>meter number</th><th>source</th>{head}</tr>{rows}</table>"
        "</fieldset><button type=submit>Create</button></form>"
    )


def _owner_form(
    unit: str | None, company: str, number: str, owner: str, codes: list[str]
) -> str:
    """An administrator's change of owner: the new owner and the reason (both required)."""
    options = "".join(
        f'<option value="{escape(c)}">{escape(c)}</option>' for c in codes if c != owner
    )
    return (
        f'<form id="owner" method="post" action="{PREFIX}/page/client-numbers/owner">'
        f"{_hidden(unit=unit or '', company=company, client_number=number)}"
        f"<fieldset><legend>Change the owner of {escape(company)} {escape(number)} (now unit "
        f"{escape(owner)})</legend>"
        f'<label>New owner <select name="new_owner" required>{options}</select></label> '
        '<label>Reason <input name="reason" size="40" required></label>'
        "</fieldset><button type=submit>Change owner</button></form>"
    )


async def _meter_forms(
    conn: Any, unit: str, meter: dict[str, Any], can_act: bool, view: str, day: date
) -> str:
    """The owner's forms (edit, load an invoice) or, for an associated unit, why not; and
    the meter's invoices."""
    number = meter["meter"]
    rows = await store.invoices(conn, number)
    table = _table(rows, ["period_start", "period_end", "energy_kwh", "amount",
                          "invoice_number", "loaded_by"], "invoices")  # fmt: skip
    head = f"<h2>Meter {escape(number)}: attributes and invoices</h2>"
    if meter["relation"] != "owner":
        return (
            f'{head}<p id="read-only">Read only: meter {escape(number)} is owned by unit '
            f"{escape(meter['owner'])}; only the owner edits it or loads its invoices.</p>"
            f"{table}"
        )
    if not can_act:
        return head + table
    action = f"{PREFIX}/page/meters/{escape(number)}"
    keep = _hidden(unit=unit, view=view, day=day.isoformat())  # back to the same view
    boxes = "".join(
        f'<label><input type="checkbox" name="{f}"{" checked" if meter[f] else ""}> '
        f"{f.replace('_', ' ')}</label> "
        for f in EDIT_FIELDS
    )
    return (
        f'{head}<form id="edit" method="post" action="{action}/edit">'
        f"{keep}<fieldset><legend>Edit</legend>{boxes}</fieldset>"
        "<button type=submit>Save</button></form>"
        f'<form id="invoice" method="post" action="{action}/invoices">{keep}'
        "<fieldset><legend>Load an invoice</legend>"
        '<label>From <input type="date" name="period_start" required></label> '
        '<label>To <input type="date" name="period_end" required></label> '
        '<label>kWh <input name="energy_kwh" inputmode="decimal" required></label> '
        '<label>Amount <input name="amount" inputmode="decimal" required></label> '
        '<label>Invoice number <input name="invoice_number" required></label>'
        "</fieldset><button type=submit>Load</button></form>"
        f"{table}"
    )


async def _form(request: Request) -> dict[str, list[str]]:
    """The posted form fields, after the same-origin check (see the module docstring)."""
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
        raise HTTPException(403, "a form posted from another site is refused")
    if request.headers.get("sec-fetch-site") == "cross-site":
        raise HTTPException(403, "a form posted from another site is refused")
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind != "application/x-www-form-urlencoded":
        raise HTTPException(415, "post the page's form (application/x-www-form-urlencoded)")
    return parse_qs((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)


def _one(form: dict[str, list[str]], name: str) -> str | None:
    values = form.get(name)
    return values[0] if values else None


def _view(form: dict[str, list[str]]) -> dict[str, str]:
    """The view and day the form was posted from, when valid, to go back to them."""
    out = {}
    if _one(form, "view") in ("day", "month", "year"):
        out["view"] = _one(form, "view") or ""
    try:
        out["day"] = date.fromisoformat(_one(form, "day") or "").isoformat()
    except ValueError:
        pass
    return out


def _back(unit: str, notice: str, **more: str) -> RedirectResponse:
    query = urlencode({"unit": unit, **more, "notice": notice})
    return RedirectResponse(f"{PREFIX}/page?{query}", status_code=303)


def _page_head(title: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>cgm portal: {title}</title>"
        f"<style>{CSS}</style></head><body><h1>Consumption portal</h1>"
    )


def _refused(exc: HTTPException, unit: str | None) -> HTMLResponse:
    back = f"{PREFIX}/page" + (f"?{urlencode({'unit': unit})}" if unit else "")
    return HTMLResponse(
        _page_head("refused")
        + f'<p class="refused" id="refused">{escape(str(exc.detail))}</p>'
        f'<p><a href="{escape(back)}">Back to the portal</a></p></body></html>',
        status_code=exc.status_code,
    )


def _invalid(exc: ValidationError) -> HTTPException:
    parts = [f"{'.'.join(map(str, e['loc'])) or 'form'}: {e['msg']}" for e in exc.errors()]
    return HTTPException(422, "; ".join(parts))


M = TypeVar("M", bound=BaseModel)


def _parsed(model: type[M], **fields: Any) -> M:
    """The form's fields as ``model``; what it refuses is a 422 with every reason."""
    try:
        return model(**fields)
    except ValidationError as exc:
        raise _invalid(exc) from None


@router.post("/page/associate", response_class=HTMLResponse, include_in_schema=False)
async def page_associate(request: Request, user: Reader) -> Any:
    try:
        form = await _form(request)
    except HTTPException as exc:
        return _refused(exc, None)
    unit = _one(form, "unit") or None
    try:
        body = _parsed(
            Association,
            company=_one(form, "company") or "", number=_one(form, "client_number") or "",
            meters=form.get("meter", []), unit=unit,
        )  # fmt: skip
        result = await associate_unit(request, user, body)
    except HTTPException as exc:
        return _refused(exc, unit)
    return _back(result["unit"], "associated", meter=body.meters[0])


@router.post("/page/meters/{number}/edit", response_class=HTMLResponse, include_in_schema=False)
async def page_edit(number: str, request: Request, user: Reader) -> Any:
    try:
        form = await _form(request)
    except HTTPException as exc:
        return _refused(exc, None)
    unit = _one(form, "unit") or None
    # An unchecked box is not posted: every editable field is set, on or off.
    changes = {f: _one(form, f) is not None for f in EDIT_FIELDS}
    try:
        acting = await edit_unit_meter(request, user, number, changes, unit)
    except HTTPException as exc:
        return _refused(exc, unit)
    return _back(acting, "edited", meter=number, **_view(form))


@router.post(
    "/page/meters/{number}/invoices", response_class=HTMLResponse, include_in_schema=False
)
async def page_invoice(number: str, request: Request, user: Reader) -> Any:
    try:
        form = await _form(request)
    except HTTPException as exc:
        return _refused(exc, None)
    unit = _one(form, "unit") or None
    fields = ("period_start", "period_end", "energy_kwh", "amount", "invoice_number")
    try:
        body = _parsed(Invoice, **{f: _one(form, f) for f in fields}, unit=unit)
        result = await add_invoice(request, user, number, body)
    except HTTPException as exc:
        return _refused(exc, unit)
    return _back(result["unit"], "invoice", meter=number, **_view(form))


@router.post("/page/client-numbers", response_class=HTMLResponse, include_in_schema=False)
async def page_create(request: Request, user: Reader) -> Any:
    try:
        form = await _form(request)
    except HTTPException as exc:
        return _refused(exc, None)
    unit = _one(form, "unit") or None
    company, number = _one(form, "company") or "", _one(form, "client_number") or ""
    meters = [
        {
            "number": (_one(form, f"m{i}_number") or "").strip(),
            "source": _one(form, f"m{i}_source") or "electricity",
            **{f: _one(form, f"m{i}_{f}") is not None for f in EDIT_FIELDS},
        }
        for i in range(METER_ROWS)
    ]
    try:
        body = _parsed(
            NewClientNumber,
            company=company, number=number, tariff_type=_one(form, "tariff_type") or "",
            connected_power_kw=(_one(form, "connected_power_kw") or "").strip() or None,
            meters=[m for m in meters if m["number"]], unit=unit,
        )  # fmt: skip
        result = await create_for_unit(request, user, body)
    except HTTPException as exc:
        return _refused(exc, unit)
    if isinstance(result, Response):  # registered already: say so, and offer to associate
        found = json.loads(bytes(result.body))
        lookup = urlencode({"unit": unit or "", "company": company, "client_number": number})
        return HTMLResponse(
            _page_head("exists")
            + f'<p class="refused" id="refused">{escape(found["error"])}</p>'
            f'<p><a id="associate-instead" href="{PREFIX}/page?{escape(lookup)}">Associate '
            "with its meters</a></p></body></html>",
            status_code=409,
        )
    return _back(result["unit"], "created", meter=result["meters"][0])


@router.post("/page/client-numbers/owner", response_class=HTMLResponse, include_in_schema=False)
async def page_owner(request: Request, user: Reader) -> Any:
    try:
        form = await _form(request)
    except HTTPException as exc:
        return _refused(exc, None)
    unit = _one(form, "unit") or None
    company, number = _one(form, "company") or "", _one(form, "client_number") or ""
    try:
        body = _parsed(
            OwnerChange,
            company=company, number=number, new_owner=_one(form, "new_owner") or "",
            reason=(_one(form, "reason") or "").strip(),
        )  # fmt: skip
        await change_client_owner(request, user, body)
    except HTTPException as exc:
        return _refused(exc, unit)
    query = urlencode({**({"unit": unit} if unit else {}), "company": company,
                       "client_number": number, "notice": "owner"})  # fmt: skip
    return RedirectResponse(f"{PREFIX}/page?{query}", status_code=303)
