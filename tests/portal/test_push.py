"""Pushes to the portal simulator over real HTTP: retries with the same idempotency key,
a rejection kept, a corrected day pushed again as a new version, an incomplete day held."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import psycopg

from cgm.localtime import hour_starts
from cgm.portal import loader, store
from cgm.portal.push import delivery_log, push_day
from cgm.storage import write_settled
from cgm.storage.settled import SettledValue
from simulators.portal import PortalSimulator
from tests.api.conftest import make_frontier
from tests.portal.conftest import client, tag, unit, write

DAY = date(2026, 4, 7)


async def _meter(db_url: str, conn: psycopg.AsyncConnection, tmp_path: Path) -> tuple[str, int]:
    fr = await make_frontier(db_url)
    c = client()
    c["meters"][0]["cgm"] = {"frontier": fr.code, "channel": "active_import"}
    await store.import_inventory(
        conn, loader.load(write(tmp_path / f"{tag()}.yaml", [unit(client_numbers=[c])])), "t"
    )
    await conn.commit()
    return c["meters"][0]["number"], fr.id


async def _settle(
    conn: psycopg.AsyncConnection,
    fid: int,
    day: date,
    hours: int,
    est: int | None,
    value: float = 5.0,
) -> None:
    rows = [
        SettledValue(
            fid,
            "active_import",
            t,
            value + i,
            "estimate" if i == est else "principal",
            "typical_day" if i == est else None,
        )
        for i, t in enumerate(hour_starts(day)[:hours])
    ]
    await write_settled(conn, rows, actor="test")
    await conn.commit()


async def test_push_retries_corrects_and_logs(
    db_url: str, conn: psycopg.AsyncConnection, tmp_path: Path
) -> None:
    number, fid = await _meter(db_url, conn, tmp_path)
    with PortalSimulator() as portal:
        # An incomplete day is not pushed.
        await _settle(conn, fid, DAY, 23, est=3)
        s = await push_day(conn, portal.url, DAY, meter=number, attempts=3)
        assert s.incomplete == [number] and portal.state.requests == 0

        # Complete: two 503s, then delivered on the third attempt with one key.
        await _settle(conn, fid, DAY, 24, est=3)
        portal.state.fail_next = 2
        s = await push_day(conn, portal.url, DAY, meter=number, attempts=3)
        assert s.delivered == 1 and portal.state.requests == 3
        (v1,) = portal.state.versions(number, DAY.isoformat())
        assert v1["version"] == 1 and v1["correction"] is False
        assert [h["hour_period"] for h in v1["hours"] if h["estimated"]] == [4]
        assert v1["hours"][3]["method"] == "typical_day" and v1["estimated_hours"] == 1

        # Nothing changed: nothing sent again.
        s = await push_day(conn, portal.url, DAY, meter=number, attempts=3)
        assert s.unchanged == 1 and portal.state.requests == 3

        # A corrected day goes again as version 2, with a new key.
        await _settle(conn, fid, DAY, 24, est=None)
        s = await push_day(conn, portal.url, DAY, meter=number, attempts=3)
        assert s.delivered == 1
        v1, v2 = portal.state.versions(number, DAY.isoformat())
        assert v2["version"] == 2 and v2["correction"] is True and v2["estimated_hours"] == 0
        assert portal.state.duplicates == 0

        log = await delivery_log(conn, DAY, number)
        assert [(e["version"], e["state"], e["last_status"]) for e in log] == [
            (2, "delivered", 201),
            (1, "delivered", 201),
        ]
        assert log[1]["attempts"] == 3


async def test_push_failure_kept_then_delivered_with_same_key(
    db_url: str, conn: psycopg.AsyncConnection, tmp_path: Path
) -> None:
    number, fid = await _meter(db_url, conn, tmp_path)
    day = DAY + timedelta(days=3)
    await _settle(conn, fid, day, 24, est=None)
    with PortalSimulator() as portal:
        portal.state.fail_next = 10
        s = await push_day(conn, portal.url, day, meter=number, attempts=2)
        assert s.failed == [number] and portal.state.received == {}
        (entry,) = await delivery_log(conn, day, number)
        assert (entry["state"], entry["attempts"], entry["last_status"]) == ("pending", 2, 503)

        portal.state.fail_next = 0
        s = await push_day(conn, portal.url, day, meter=number, attempts=2)
        assert s.delivered == 1
        (key,) = portal.state.received
        assert key == entry["idempotency_key"]

        # Unreachable portal: a transport error is logged as such, nothing lost.
        day2 = day + timedelta(days=1)
        await _settle(conn, fid, day2, 24, est=None)
    s = await push_day(conn, portal.url, day2, meter=number, attempts=1, timeout_s=2)
    assert s.failed == [number]
    (entry,) = await delivery_log(conn, day2, number)
    assert entry["state"] == "pending" and entry["last_status"] is None and entry["last_error"]


async def test_rejection_is_kept_not_retried(
    db_url: str, conn: psycopg.AsyncConnection, tmp_path: Path
) -> None:
    number, fid = await _meter(db_url, conn, tmp_path)
    day = DAY + timedelta(days=7)
    await _settle(conn, fid, day, 24, est=None)
    with PortalSimulator() as portal:
        portal.state.reject_next = 1
        s = await push_day(conn, portal.url, day, meter=number, attempts=4)
        assert s.rejected == [number] and portal.state.requests == 1
        (entry,) = await delivery_log(conn, day, number)
        assert entry["state"] == "rejected" and entry["last_status"] == 422
        assert "refused by the portal" in entry["last_response"]


def test_cli_push_and_deliveries(db_url: str, tmp_path: Path, monkeypatch, capsys) -> None:
    import asyncio

    from cgm.cli import main
    from cgm.config import get_settings

    async def prepare() -> str:
        async with await psycopg.AsyncConnection.connect(db_url) as c:
            number, fid = await _meter(db_url, c, tmp_path)
            await _settle(c, fid, DAY + timedelta(days=20), 24, est=5)
            return number

    number = asyncio.run(prepare())
    day = (DAY + timedelta(days=20)).isoformat()
    monkeypatch.setenv("CGM_DATABASE_URL", db_url)
    monkeypatch.setenv("CGM_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        assert main(["portal", "push", "--day", day]) == 2
        assert "CGM_PORTAL_PUSH_URL" in capsys.readouterr().err
        with PortalSimulator() as portal:
            monkeypatch.setenv("CGM_PORTAL_PUSH_URL", portal.url)
            get_settings.cache_clear()
            assert main(["portal", "push", "--day", day, "--meter", number]) == 0
            assert "1 delivered" in capsys.readouterr().out
            assert len(portal.state.versions(number, day)) == 1
        assert main(["portal", "deliveries", "--day", day, "--meter", number]) == 0
        assert f"{number} v1 delivered attempts 1 last HTTP 201" in capsys.readouterr().out
    finally:
        get_settings.cache_clear()
