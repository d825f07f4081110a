"""The ASIC report end to end against the simulator over HTTP: format, delivery, every
injected failure, corrections, expired tokens, holds."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import timedelta

import psycopg

from cgm.reporting import holds
from cgm.reporting.asic.format import pack
from cgm.reporting.asic.status import day_status
from tests.reporting.conftest import (
    ADJUSTMENT,
    BACKUP_CT,
    DAY,
    NOW,
    backup_readings,
    make_frontier,
    rows,
    settle,
    value,
)


async def _ready(db, sim, n=1, **kw):
    frs = [await make_frontier(db) for _ in range(n)]
    for fr in frs:
        await settle(db, fr, **kw)
        await backup_readings(db, fr)
        sim.known_frontiers.add(fr.code)
    return frs


async def test_documents_principal_settled_backup_own_readings(db, asic, make_reporter) -> None:
    sim, _ = asic
    fr = await make_frontier(db)
    await settle(db, fr, estimate={3: "typical_curve", 4: "typical_curve"})
    await backup_readings(db, fr)
    build = await make_reporter().build(DAY, [fr.code])
    docs = {d.role: d for d in build.documents}
    p, b = docs["principal"].content, docs["backup"].content
    assert docs["principal"].file_name == f"{fr.principal}_20260301.json"
    assert docs["backup"].file_name == f"{fr.backup}_20260301.json"
    for c in (p, b):
        assert c["tipoReporte"] == "LecturaDiaria" and c["duracionPeriodo"] == "PT1H"
        assert c["frtID"] == fr.code
        assert c["fechaInicio"] == "2026-03-01T00:00:00-05:00"
        assert c["fechaFin"] == "2026-03-02T00:00:00-05:00"
        assert [e["periodo"] for e in c["lecturas"]] == list(range(1, 25))
        assert len(c["lecturasReactiva"]) == 24 and "lecturasExportacion" not in c
        assert c["unidades"] == {"lecturas": "kWh", "lecturasReactiva": "kvarh"}
    assert (p["esRespaldo"], b["esRespaldo"]) == (False, True)
    # Principal: the settled series, estimated hours listed with their method.
    assert p["lecturas"][0]["valor"] == value(1, 1)
    assert {"serie": "lecturas", "periodos": [3, 4], "metodo": "typical_curve"} in p[
        "periodosEstimados"
    ]
    # Backup: only its own readings in primary units, never settled values.
    assert abs(b["lecturas"][0]["valor"] - value(1, 1) * 1.01) < 1e-6
    assert abs(b["lecturas"][9]["valor"] - value(1, 10) * 1.01) < 1e-6
    assert b["periodosEstimados"] == [] and "periodosRespaldo" not in b
    assert p["periodosRespaldo"] == []
    assert BACKUP_CT * ADJUSTMENT == 30.0  # the factor the backup values went through
    report = build.estimation_report()
    assert {(e["frontier"], tuple(e["periodos"])) for e in report} == {(fr.code, (3, 4))}


async def test_incomplete_day_not_sent_and_no_frontier_without_series(
    db, asic, make_reporter
) -> None:
    sim, _ = asic
    fr = await make_frontier(db)
    await settle(db, fr, periods=23)
    res = await make_reporter().report_day(DAY, [fr.code])
    assert res.build.documents == [] and "23/24" in res.build.not_ready[fr.code]
    assert sim.messages == {}


async def test_send_poll_success_and_never_twice(db, asic, make_reporter) -> None:
    sim, _ = asic
    frs = await _ready(db, sim, 2)
    rep = make_reporter()
    res = await rep.report_day(DAY, [f.code for f in frs])
    assert len(res.sent) == 4 and not res.failed
    assert await rep.poll(rounds=50, interval_s=0.05) == 0
    got = {(d["frtID"], d["esRespaldo"]) for d in sim.received()}
    assert got == {(f.code, r) for f in frs for r in (False, True)}
    states = await rows(db, "SELECT state, kind FROM asic_document")
    assert states and all(s == ("success", "original") for s in states)
    # Every request and response is stored with hashes.
    ex = await rows(db, "SELECT operation, status_code, request_hash FROM asic_exchange")
    assert {e[0] for e in ex} == {"token", "upload", "status"}
    assert all(len(e[2]) == 64 for e in ex)
    # The same version is never sent again.
    again = await rep.report_day(DAY, [f.code for f in frs])
    assert again.sent == [] and len(again.unchanged) == 4
    assert len(sim.messages) == 1


async def test_zip_limits_five_documents(db, asic, make_reporter) -> None:
    sim, _ = asic
    frs = await _ready(db, sim, 3)  # 6 documents
    res = await make_reporter().report_day(DAY, [f.code for f in frs])
    assert len(res.sent) == 6
    sizes = sorted(len(m.documents) for m in sim.messages.values())
    assert sizes == [1, 5]
    subs = await rows(db, "SELECT documents, payload_hash FROM asic_submission ORDER BY id")
    assert [s[0] for s in subs] == [5, 1]


def test_pack_respects_bytes_limit() -> None:
    from cgm.reporting.asic.format import make_document

    docs = [
        make_document(
            cgm_code="C",
            frontier_id=1,
            frontier_code="Frt1",
            meter_id=i,
            meter_serial=f"M{i}",
            role="principal",
            day=DAY,
            series={1: [float(i * 7919 + p) for p in range(24)]},
            estimated={},
            settled_version=1,
            fmt="json_zip",
        )  # fmt: skip
        for i in range(4)
    ]
    one = len(pack(docs[:1], max_documents=5, max_bytes=10**6)[0][0])
    zips = pack(docs, max_documents=5, max_bytes=int(one * 2.5))
    assert [len(d) for _, d in zips] == [2, 2]
    for payload, ds in zips:
        assert len(payload) <= one * 2.5
        assert zipfile.ZipFile(io.BytesIO(payload)).namelist() == [d.file_name for d in ds]


async def test_zip_refused_by_asic_is_recorded(db, asic, make_reporter) -> None:
    sim, _ = asic
    frs = await _ready(db, sim, 3)
    res = await make_reporter(asic_max_documents_per_zip=6).report_day(DAY, [f.code for f in frs])
    assert len(res.rejected) == 6 and "documentos" in next(iter(res.rejected.values()))
    assert await rows(db, "SELECT DISTINCT state FROM asic_document") == [("error",)]
    assert sim.messages == {}


async def test_server_errors_retried_with_backoff(db, asic, make_reporter) -> None:
    sim, _ = asic
    frs = await _ready(db, sim)
    sim.fail_next = 2
    res = await make_reporter().report_day(DAY, [frs[0].code])
    assert len(res.sent) == 2
    codes = [r[0] for r in await rows(db, "SELECT status_code FROM asic_exchange "
                                          "WHERE operation = 'upload' ORDER BY id")]  # fmt: skip
    assert codes == [503, 503, 202]


async def test_transport_failure_keeps_documents_pending_then_sent_once(
    db, asic, make_reporter
) -> None:
    sim, _ = asic
    frs = await _ready(db, sim)
    sim.fail_next = 100
    rep = make_reporter(attempts=2)
    res = await rep.report_day(DAY, [frs[0].code])
    assert len(res.failed) == 2 and res.sent == []
    assert await rows(db, "SELECT DISTINCT state FROM asic_document") == [("pending",)]
    assert await rows(db, "SELECT state FROM asic_submission") == [("failed",)]
    sim.fail_next = 0
    res = await rep.report_day(DAY, [frs[0].code])
    assert len(res.sent) == 2
    assert len(await rows(db, "SELECT 1 FROM asic_document")) == 2  # same rows, not new ones
    assert len(sim.messages) == 1


async def test_timeout_retried(db, asic, make_reporter) -> None:
    sim, _ = asic
    frs = await _ready(db, sim)
    sim.hang_next, sim.hang_s = 1, 5.0
    res = await make_reporter(timeout=0.3).report_day(DAY, [frs[0].code])
    assert len(res.sent) == 2
    ex = await rows(db, "SELECT status_code, error FROM asic_exchange WHERE operation = 'upload' "
                        "ORDER BY id")  # fmt: skip
    assert ex[0][0] is None and "Timeout" in ex[0][1] and ex[-1][0] == 202


async def test_rejected_document_and_unknown_frontier(db, asic, make_reporter) -> None:
    sim, _ = asic
    frs = await _ready(db, sim, 3)
    sim.reject.add(frs[0].code)
    sim.known_frontiers.discard(frs[1].code)
    rep = make_reporter()
    await rep.report_day(DAY, [f.code for f in frs])
    assert await rep.poll(rounds=50, interval_s=0.05) == 0
    async with await psycopg.AsyncConnection.connect(db) as c:
        status = {s.frontier: s for s in await day_status(c, DAY)}
    assert {d.state for d in status[frs[0].code].documents} == {"error"}
    assert "rechazado" in status[frs[0].code].documents[0].detail
    assert "desconocida" in status[frs[1].code].documents[0].detail
    assert {d.state for d in status[frs[2].code].documents} == {"success"}
    assert all(d.message_id for s in status.values() for d in s.documents)


async def test_estimated_hours_give_success_with_warning(db, asic, make_reporter) -> None:
    sim, _ = asic
    frs = await _ready(db, sim, estimate={5: "scada_integration"})
    rep = make_reporter()
    await rep.report_day(DAY, [frs[0].code])
    await rep.poll(rounds=50, interval_s=0.05)
    got = await rows(db, "SELECT role, state FROM asic_document ORDER BY role")
    assert got == [("backup", "success"), ("principal", "success_warning")]


async def test_slow_processing_is_polled_until_final(db, asic, make_reporter) -> None:
    sim, _ = asic
    frs = await _ready(db, sim)
    sim.processing_s = 3.0
    rep = make_reporter()
    await rep.report_day(DAY, [frs[0].code])
    assert await rep.poll(rounds=1) == 1  # the ASIC answers "waiting"
    assert await rows(db, "SELECT DISTINCT state FROM asic_document") == [("waiting",)]
    assert await rep.poll(rounds=200, interval_s=0.05) == 0
    assert await rows(db, "SELECT DISTINCT state FROM asic_document") == [("success",)]


async def test_expired_token_is_renewed(db, asic, make_reporter) -> None:
    sim, _ = asic
    frs = await _ready(db, sim)
    rep = make_reporter()
    await rep.report_day(DAY, [frs[0].code])
    sim.expire_tokens()  # the token the client holds is no longer valid
    assert await rep.poll(rounds=50, interval_s=0.05) == 0
    assert sim.tokens_issued == 2
    ex = [r[0] for r in await rows(db, "SELECT status_code FROM asic_exchange "
                                       "WHERE operation = 'status' ORDER BY id")]  # fmt: skip
    assert ex[0] == 401 and ex[-1] == 200


async def test_token_renewed_before_it_expires(db, asic, make_reporter) -> None:
    sim, _ = asic
    sim.token_ttl_s = 30.0
    frs = await _ready(db, sim, 2)
    rep = make_reporter(renew_margin_s=60.0)  # 30 s tokens are always "about to expire"
    await rep.report_day(DAY, [frs[0].code])
    await rep.report_day(DAY, [frs[1].code])
    assert sim.tokens_issued == 2
    assert not await rows(db, "SELECT 1 FROM asic_exchange WHERE status_code = 401")


async def test_correction_resent_within_window_and_late_outside(db, asic, make_reporter) -> None:
    sim, _ = asic
    frs = await _ready(db, sim)
    fr = frs[0]
    rep = make_reporter()
    await rep.report_day(DAY, [fr.code])
    await rep.poll(rounds=50, interval_s=0.05)
    await settle(db, fr, add=0.5)  # validation re-settled the day: new versions
    res = await rep.report_day(DAY, [fr.code])
    assert len(res.sent) == 2
    await rep.poll(rounds=50, interval_s=0.05)
    docs = await rows(db, "SELECT role, kind, settled_version, state FROM asic_document "
                          "WHERE role = 'principal' ORDER BY id")  # fmt: skip
    assert docs == [
        ("principal", "original", 1, "success"),
        ("principal", "correction", 2, "success"),
    ]
    sent = [d for d in sim.received() if not d["esRespaldo"]]
    assert [d["lecturas"][0]["valor"] for d in sent] == [value(1, 1), value(1, 1, 0.5)]
    # Unchanged since the correction: nothing more.
    assert (await rep.report_day(DAY, [fr.code])).sent == []
    # A change after the window closes is stored as late, not sent.
    await settle(db, fr, add=0.9)
    late = make_reporter(now=NOW + timedelta(days=40), asic_correction_window_days=30)
    res = await late.report_day(DAY, [fr.code])
    assert res.sent == [] and len(res.late) == 2
    assert len(sim.messages) == 2


async def test_hold_blocks_until_release(db, asic, make_reporter) -> None:
    sim, _ = asic
    frs = await _ready(db, sim, 2)
    held = frs[0]
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as c:
        assert await holds.hold(c, held.code, "meter replaced, under review", "ana")
        assert not await holds.hold(c, held.code, "again", "ana")
    rep = make_reporter()
    res = await rep.report_day(DAY, [f.code for f in frs])
    assert res.build.held == {held.code: "meter replaced, under review"}
    assert {d["frtID"] for d in sim.received()} == {frs[1].code}
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as c:
        status = {s.frontier: s for s in await day_status(c, DAY)}
        assert status[held.code].held == "meter replaced, under review"
        assert status[held.code].documents == []
        assert await holds.release(c, held.code, "reviewed, values confirmed", "ana")
    res = await rep.report_day(DAY, [f.code for f in frs])
    assert len(res.sent) == 2 and {d["frtID"] for d in sim.received()} == {f.code for f in frs}
    events = await rows(db, "SELECT action, actor FROM asic_hold_event ORDER BY id")
    assert events == [("hold", "ana"), ("release", "ana")]


async def test_daily_run_reports_yesterday_and_catches_up(db, asic, make_reporter) -> None:
    sim, _ = asic
    frs = await _ready(db, sim)
    await settle(db, frs[0], DAY - timedelta(days=1))
    rep = make_reporter(asic_correction_window_days=3)
    results = await rep.run_daily()
    assert [r.day for r in results][-1] == DAY
    sent_days = {d["fechaInicio"][:10] for d in sim.received()}
    assert sent_days == {"2026-02-28", "2026-03-01"}
    assert json.dumps(results[-1].as_dict())  # serialisable summary


async def test_metrics_pending_and_deadline(db, asic, make_reporter) -> None:
    from cgm import metrics

    sim, _ = asic
    frs = await _ready(db, sim)
    sim.processing_s = 3.0
    rep = make_reporter(asic_deadline_time="08:00", asic_deadline_days=1)
    sent_before = metrics.ASIC_DOCUMENTS.labels("sent")._value.get()
    await rep.report_day(DAY, [frs[0].code])
    assert metrics.ASIC_DOCUMENTS.labels("sent")._value.get() - sent_before == 2
    assert metrics.ASIC_PENDING._value.get() == 2
    # NOW is 07:00 of D+1 in Colombia; the deadline is 08:00 of D+1.
    assert metrics.ASIC_DEADLINE_SECONDS._value.get() == 3600
    assert metrics.ASIC_UNREPORTED._value.get() == 1
    assert await rep.poll(rounds=200, interval_s=0.05) == 0
    assert metrics.ASIC_PENDING._value.get() == 0
    assert metrics.ASIC_UNREPORTED._value.get() == 0
