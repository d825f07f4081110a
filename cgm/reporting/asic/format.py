"""The ``LecturaDiaria`` document: one meter, one Colombian day, 24 hourly periods.

What each role's document holds (README, "ASIC reporting"):

* principal: the frontier's settled series from validation, hour by hour, whatever its
  source; hours whose settled value is an estimate are listed in ``periodosEstimados`` with
  their method (sent as estimated, never passed off as measured);
  hours whose settled value came from the backup meter are listed in ``periodosRespaldo``;
* backup: only the backup meter's own validated readings in primary units (secondary × CT ×
  VT × the frontier's adjustment factor, cgm/energy.py). Its document is built only when
  the backup has a usable reading (not missing, suspect, estimated or marked invalid by the
  meter) for every hour; otherwise the day's backup document waits (``DayBuild.partial``)
  rather than borrowing settled values that may come from the principal.

A frontier-day is reported only when its settled series is complete (24 periods for every
channel it has): a partial day is "not ready", never padded with zeros.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import psycopg

from cgm.energy import primary_factor
from cgm.localtime import COLOMBIA, PERIODS, day_bounds, local_days, period_of
from cgm.reporting.asic import xm_xml
from cgm.storage.quality import Quality
from cgm.storage.settled import on_days

REPORT_TYPE = "LecturaDiaria"
PERIOD_DURATION = "PT1H"

# Settled channel id → (document key, unit). Active import keeps the plain ``lecturas`` key.
SERIES_KEYS: dict[int, tuple[str, str]] = {
    1: ("lecturas", "kWh"),
    2: ("lecturasExportacion", "kWh"),
    3: ("lecturasReactiva", "kvarh"),
    4: ("lecturasReactivaExportacion", "kvarh"),
}
ACTIVE_KEYS = ("lecturas", "lecturasExportacion")
ROLE_NAMES = {"principal": "Principal", "backup": "Respaldo"}

# A backup reading with any of these flags is not used as measured.
UNUSABLE = (
    Quality.SUSPECT
    | Quality.METER_DATA_NOT_VALID
    | Quality.METER_CRITICAL_ERROR
    | Quality.ESTIMATED
    | Quality.PARTIAL
)


@dataclass(frozen=True)
class Document:
    """One document as it will be sent: its bytes and hash are what delivery compares."""

    frontier_id: int
    frontier_code: str
    meter_id: int
    meter_serial: str
    role: str
    day: date
    content: dict[str, Any]
    settled_version: int
    estimated: list[dict[str, Any]]
    fmt: str = "xm_xml"  # or "json_zip", the legacy format (README)

    @property
    def file_name(self) -> str:
        if self.fmt == "xm_xml":
            return self.item.name
        return document_name(self.meter_serial, self.day)

    @property
    def body(self) -> bytes:
        """The stored record's canonical bytes (JSON): in the XM format they hold the
        item's readings and what the XML cannot say (estimated and backup-sourced hours)."""
        return encode(self.content)

    @property
    def item(self) -> xm_xml.ReportItem:
        """The XM ``ReadingReportItem``: active energy in kWh (import, else export)."""
        key = "lecturas" if "lecturas" in self.content else "lecturasExportacion"
        return xm_xml.ReportItem(
            self.frontier_code,
            self.role == "backup",
            self.day,
            tuple(e["valor"] for e in self.content[key]),
        )

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(self.body).hexdigest()


@dataclass
class DayBuild:
    """Everything built for one day: documents, and why some frontiers have none."""

    day: date
    documents: list[Document] = field(default_factory=list)
    not_ready: dict[str, str] = field(default_factory=dict)  # frontier code → reason
    held: dict[str, str] = field(default_factory=dict)  # frontier code → hold reason
    partial: dict[str, str] = field(default_factory=dict)  # code → why no backup document

    def estimation_report(self) -> list[dict[str, Any]]:
        """Per frontier: the estimated hours and the method, from the principal documents."""
        out = []
        for d in self.documents:
            if d.role == "principal":
                for e in d.estimated:
                    out.append({"frontier": d.frontier_code, "day": d.day.isoformat(), **e})
        return out


def document_name(meter_serial: str, day: date) -> str:
    return f"{meter_serial}_{day:%Y%m%d}.json"


def encode(content: dict[str, Any]) -> bytes:
    """Canonical bytes (stable key order, no spaces) so equal content hashes equal."""
    return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()


def _local_iso(instant: datetime) -> str:
    return instant.astimezone(COLOMBIA).isoformat()


def make_document(
    *,
    cgm_code: str,
    frontier_id: int,
    frontier_code: str,
    meter_id: int,
    meter_serial: str,
    role: str,
    day: date,
    series: dict[int, list[float]],
    estimated: dict[int, dict[int, str]],
    settled_version: int,
    from_backup: dict[int, list[int]] | None = None,
    fmt: str = "xm_xml",
) -> Document:
    """A document from complete series: channel → 24 values (period order) in primary units;
    ``estimated``: channel → {period: method}; ``from_backup``: channel → periods whose
    settled value came from the backup meter (principal documents)."""
    start, end = day_bounds(day)
    content: dict[str, Any] = {
        "tipoReporte": REPORT_TYPE,
        "codigoCGM": cgm_code,
        "frtID": frontier_code,
        "medidor": meter_serial,
        "tipoMedidor": ROLE_NAMES[role],
        "esRespaldo": role == "backup",
        "fechaInicio": _local_iso(start),
        "fechaFin": _local_iso(end),
        "duracionPeriodo": PERIOD_DURATION,
        "unidades": {},
    }
    est_out: list[dict[str, Any]] = []
    for ch in sorted(series):
        values = series[ch]
        if len(values) != PERIODS:
            raise ValueError(f"channel {ch}: {len(values)} periods, need {PERIODS}")
        key, unit = SERIES_KEYS[ch]
        content["unidades"][key] = unit
        content[key] = [{"periodo": i + 1, "valor": round(v, 6)} for i, v in enumerate(values)]
        if estimated.get(ch):
            by_method: dict[str, list[int]] = {}
            for period, method in sorted(estimated[ch].items()):
                by_method.setdefault(method, []).append(period)
            for method, periods in by_method.items():
                est_out.append({"serie": key, "periodos": periods, "metodo": method})
    content["periodosEstimados"] = est_out
    if role == "principal":
        content["periodosRespaldo"] = [
            {"serie": SERIES_KEYS[ch][0], "periodos": sorted(ps)}
            for ch, ps in sorted((from_backup or {}).items())
            if ps
        ]
    content["version"] = settled_version
    return Document(
        frontier_id, frontier_code, meter_id, meter_serial, role, day, content,
        settled_version, est_out, fmt,
    )  # fmt: skip


async def build_day(
    conn: psycopg.AsyncConnection,
    day: date,
    cgm_code: str,
    *,
    frontiers: Sequence[str] | None = None,
    held: dict[str, str] | None = None,
    fmt: str = "xm_xml",
) -> DayBuild:
    """Documents of ``day`` for every frontier (or ``frontiers``) that is not held."""
    out = DayBuild(day)
    held = held or {}
    start, end = day_bounds(day)
    cur = await conn.execute(
        """SELECT f.id, f.code, f.adjustment_factor, m.id, m.serial, m.role, m.ct_ratio, m.vt_ratio
           FROM frontier f JOIN meter m ON m.frontier_id = f.id AND m.active
           WHERE (%(codes)s::text[] IS NULL OR f.code = ANY(%(codes)s))
             AND f.asic_period = 'daily'  -- monthly frontiers: reporting/asic/monthly.py
           ORDER BY f.code, m.role DESC""",
        {"codes": list(frontiers) if frontiers else None},
    )
    meters: dict[int, list[tuple]] = {}
    codes: dict[int, tuple[str, float]] = {}
    for fid, code, adj, mid, serial, role, ct, vt in await cur.fetchall():
        codes[fid] = (code, adj)
        meters.setdefault(fid, []).append((mid, serial, role, ct, vt))
    if frontiers:
        for missing in sorted(set(frontiers) - {c for c, _ in codes.values()}):
            out.not_ready[missing] = ("unknown frontier, no active meter, or reported "
                                      "monthly")
    for fid, (code, adj) in codes.items():
        if code in held:
            out.held[code] = held[code]
            continue
        settled = await _settled(conn, fid, start, end)
        reason = _incomplete(settled)
        if reason:
            out.not_ready[code] = reason
            continue
        version = max(v for rows in settled.values() for (_, _, _, v) in rows.values())
        for mid, serial, role, ct, vt in meters[fid]:
            if role == "principal":
                series = {ch: [rows[p][0] for p in range(1, 25)] for ch, rows in settled.items()}
                est = {
                    ch: {p: r[2] for p, r in rows.items() if r[1] == "estimate"}
                    for ch, rows in settled.items()
                }
                from_backup = {
                    ch: [p for p, r in rows.items() if r[1] == "backup"]
                    for ch, rows in settled.items()
                }
            else:
                series, missing = await _backup_series(
                    conn, mid, list(settled), start, end, ct, vt, adj
                )
                if missing:
                    out.partial[code] = f"backup meter {serial}: " + missing
                    continue
                est, from_backup = {}, {}
            out.documents.append(
                make_document(
                    cgm_code=cgm_code,
                    frontier_id=fid,
                    frontier_code=code,
                    meter_id=mid,
                    meter_serial=serial,
                    role=role,
                    day=day,
                    series=series,
                    estimated=est,
                    settled_version=version,
                    from_backup=from_backup,
                    fmt=fmt,
                )
            )
    return out


async def _settled(
    conn: psycopg.AsyncConnection, fid: int, start: datetime, end: datetime
) -> dict[int, dict[int, tuple[float, str, str, int]]]:
    """channel → period → (value, source, method, version) of the current settled series."""
    cur = await conn.execute(
        f"""SELECT channel, interval_start, value, source, coalesce(method, ''), version
           FROM settled_reading
           WHERE {on_days()} AND frontier_id = %(f)s
             AND interval_start >= %(a)s AND interval_start < %(b)s""",
        {"days": local_days(start, end), "f": fid, "a": start, "b": end},
    )
    out: dict[int, dict[int, tuple[float, str, str, int]]] = {}
    for ch, at, value, source, method, version in await cur.fetchall():
        out.setdefault(ch, {})[period_of(at)[1]] = (value, source, method, version)
    return out


def _incomplete(settled: dict[int, dict[int, Any]]) -> str | None:
    if not settled:
        return "no settled series"
    partial = {SERIES_KEYS[ch][0]: len(r) for ch, r in settled.items() if len(r) != PERIODS}
    if partial:
        return "settled series incomplete: " + ", ".join(
            f"{k} {n}/{PERIODS}" for k, n in sorted(partial.items())
        )
    if not any(SERIES_KEYS[ch][0] in ACTIVE_KEYS for ch in settled):
        return "no active energy series"
    return None


async def _backup_series(
    conn: psycopg.AsyncConnection,
    meter_id: int,
    channels: list[int],
    start: datetime,
    end: datetime,
    ct: float,
    vt: float,
    adjustment: float,
) -> tuple[dict[int, list[float]], str]:
    """The backup meter's own usable readings in primary units, and what is missing
    ("" when every hour of every channel is there)."""
    factor = primary_factor(ct, vt, adjustment)
    cur = await conn.execute(
        """SELECT channel, interval_start, value, quality FROM reading
           WHERE meter_id = %s AND interval_start >= %s AND interval_start < %s""",
        (meter_id, start, end),
    )
    own: dict[tuple[int, int], float] = {}
    for ch, at, value, quality in await cur.fetchall():
        if not quality & UNUSABLE:
            own[(ch, period_of(at)[1])] = value * factor
    series: dict[int, list[float]] = {}
    missing = []
    for ch in sorted(channels):
        have = [p for p in range(1, PERIODS + 1) if (ch, p) in own]
        if len(have) != PERIODS:
            missing.append(f"{SERIES_KEYS[ch][0]} {len(have)}/{PERIODS} own validated readings")
            continue
        series[ch] = [own[(ch, p)] for p in range(1, PERIODS + 1)]
    return series, ", ".join(missing)


def pack(
    documents: Iterable[Document], *, max_documents: int, max_bytes: int
) -> list[tuple[bytes, list[Document]]]:
    """Zips of at most ``max_documents`` documents and ``max_bytes`` bytes each."""
    zips: list[tuple[bytes, list[Document]]] = []
    batch: list[Document] = []
    for doc in documents:
        trial = batch + [doc]
        if len(trial) > max_documents or len(_zip(trial)) > max_bytes:
            if not batch:
                raise ValueError(f"{doc.file_name} alone exceeds {max_bytes} bytes zipped")
            zips.append((_zip(batch), batch))
            batch = [doc]
        else:
            batch = trial
    if batch:
        zips.append((_zip(batch), batch))
    return zips


def _zip(documents: Sequence[Document]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for d in documents:
            # Fixed timestamp: the same documents always make the same zip (payload hash).
            info = zipfile.ZipInfo(d.file_name, date_time=(2000, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, d.body)
    return buf.getvalue()
