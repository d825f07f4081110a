"""Failures against Table 5 (art. 36): the counting rules' edge cases, the stored events, the
alarm before the limit, the ASIC notice and the level-2 CLI."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from cgm import failures
from cgm.cli import main
from cgm.config import get_settings
from cgm.failures import Event, count, table5_limit, year_of_operation
from cgm.security.users import add_user

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
H = timedelta(hours=1)


def ev(i: int, element: str, start: datetime, hours: float | None = 2.0, kind: str = "failure"):
    return Event(i, element, kind, start, None if hours is None else start + hours * H)


def n(events, *, backup=True, start=date(2020, 1, 1)) -> int:
    return count(events, has_backup=backup, operation_start=start, now=NOW).count


@pytest.mark.parametrize(
    ("start", "year", "limit"),
    [
        (date(2026, 1, 1), 1, 4),
        (date(2025, 6, 2), 1, 4),  # 12 months minus a day: still year 1
        (date(2025, 6, 1), 2, 4),  # the anniversary starts year 2
        (date(2024, 6, 1), 3, 3),
        (date(2023, 6, 2), 3, 3),
        (date(2023, 6, 1), 4, 2),
        (date(2001, 1, 1), 26, 2),
    ],
)
def test_year_of_operation_and_limit(start: date, year: int, limit: int) -> None:
    assert year_of_operation(start, NOW.date()) == year
    assert table5_limit(year) == limit


def test_table5_limit_rejects_year_zero() -> None:
    with pytest.raises(ValueError):
        table5_limit(0)


def test_meter_failure_with_the_other_meter_operating_does_not_count() -> None:
    t = NOW - 30 * 24 * H
    assert n([ev(1, "principal", t)]) == 0
    assert n([ev(1, "backup", t)]) == 0
    # Principal and backup failures that never overlap: each time the other operated.
    assert n([ev(1, "principal", t), ev(2, "backup", t + 3 * H)]) == 0
    # Without a backup meter, a principal failure counts.
    assert n([ev(1, "principal", t)], backup=False) == 1


def test_both_meters_failed_at_once_count_once() -> None:
    t = NOW - 30 * 24 * H
    c = count([ev(1, "principal", t, 5), ev(2, "backup", t + 4 * H, 5)], has_backup=True,
              operation_start=date(2020, 1, 1), now=NOW)  # fmt: skip
    assert c.groups == ((1, 2),)


def test_simultaneous_element_failures_count_once_touching_ones_too() -> None:
    t = NOW - 60 * 24 * H
    events = [ev(1, "ct", t, 3), ev(2, "vt", t + H, 1), ev(3, "communication", t + 3 * H, 1)]
    assert n(events) == 1  # 3 starts exactly when 1 ends: one event in time
    assert n([ev(1, "ct", t, 3), ev(2, "vt", t + 3 * H + timedelta(seconds=1), 1)]) == 2


def test_open_failure_runs_until_now_and_merges_later_ones() -> None:
    t = NOW - 100 * 24 * H
    assert n([ev(1, "ct", t, None), ev(2, "vt", NOW - H, 0.5)]) == 1


def test_window_is_the_previous_twelve_months() -> None:
    edge = datetime(2025, 6, 1, 12, tzinfo=UTC)
    assert n([ev(1, "ct", edge)]) == 1  # exactly 12 months ago: inside
    assert n([ev(1, "ct", edge - timedelta(seconds=1))]) == 0
    assert n([ev(1, "ct", NOW + H)]) == 0  # not yet happened
    # A failure group that began before the window is not counted again inside it.
    assert n([ev(1, "ct", edge - H, 5), ev(2, "vt", edge + H, 1)]) == 0


def test_thefts_are_not_counted() -> None:
    assert n([ev(1, "principal", NOW - 5 * H, kind="theft")], backup=False) == 0


def test_alarm_before_the_limit_and_exceeded() -> None:
    t = NOW - 200 * 24 * H
    fails = [ev(i, "ct", t + i * 24 * H) for i in range(1, 6)]
    old = date(2020, 1, 1)  # year ≥ 4: limit 2

    def status(k: int, start: date = old) -> str:
        return count(fails[:k], has_backup=True, operation_start=start, now=NOW).status

    assert [status(k) for k in range(4)] == ["ok", "warning", "warning", "exceeded"]
    year1 = date(2026, 1, 1)  # limit 4
    assert [status(k, year1) for k in range(6)] == [
        "ok", "ok", "ok", "warning", "warning", "exceeded"]  # fmt: skip


# --- stored events, alarm, notice, CLI ---------------------------------------------------

PASSWORD = "correct horse battery"


@pytest.fixture
def cli_db(new_database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from cgm.config import Settings
    from cgm.migrate import upgrade

    url = new_database()
    upgrade(url, Settings(database_url=url))
    monkeypatch.setenv("CGM_DATABASE_URL", url)
    monkeypatch.setenv("CGM_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()


def _setup(url: str) -> str:
    code = f"Frt{uuid.uuid4().int % 10**9}"

    async def go() -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
            cur = await c.execute(
                """INSERT INTO frontier (code, name, kind, voltage_level, point_type,
                                         operation_start)
                   VALUES (%s, 't', 'generation', 2, 2, '2020-01-01') RETURNING id""",
                (code,),
            )
            (fid,) = await cur.fetchone()
            for role in ("principal", "backup"):
                await c.execute(
                    """INSERT INTO meter (frontier_id, serial, role, protocol, primary_host,
                                          primary_port) VALUES (%s, %s, %s, 'dlms', 'h', 1)""",
                    (fid, f"{role}{code}", role),
                )
            await add_user(c, "ana", PASSWORD, 2, actor="pytest")
            await add_user(c, "lee", PASSWORD, 1, actor="pytest")

    asyncio.run(go())
    return code


def _rows(url: str, sql: str, *a: object) -> list[tuple]:
    async def go() -> list[tuple]:
        async with await psycopg.AsyncConnection.connect(url) as c:
            return await (await c.execute(sql, a)).fetchall()

    return asyncio.run(go())


def test_cli_open_close_list_notice_level2_only(cli_db: str, capsys) -> None:
    code = _setup(cli_db)
    now = datetime.now(UTC)
    at = (now - timedelta(days=3)).isoformat()
    opening = ["failure", "open", "--frontier", code, "--element", "ct", "--at", at,
               "--description", "CT phase B open", "--password-env", "CGM_TEST_PW"]  # fmt: skip
    os.environ["CGM_TEST_PW"] = PASSWORD
    assert main([*opening, "--user", "lee"]) == 2  # level 1 may not write
    assert "level 1" in capsys.readouterr().err
    os.environ["CGM_TEST_PW"] = "wrong password here"
    assert main([*opening, "--user", "ana"]) == 2
    assert _rows(cli_db, "SELECT 1 FROM failure_event") == []
    os.environ["CGM_TEST_PW"] = PASSWORD
    assert main([*opening, "--user", "ana"]) == 0
    out = capsys.readouterr().out
    assert "1 of 2 failures (warning)" in out  # year ≥ 4, one away from the limit
    ((eid, opened_by),) = _rows(cli_db, "SELECT id, opened_by FROM failure_event")
    assert opened_by == "cli:ana"
    log = _rows(cli_db, "SELECT kind, actor, purpose FROM frontier_log ORDER BY id")
    assert log == [("failure", "cli:ana", "failure opened: ct"),
                   ("alarm", "cgm", "Table 5 failures warning: 1 of 2")]  # fmt: skip

    close = ["failure", "close", str(eid), "--at", (now - timedelta(days=4)).isoformat(),
             "--note", "replaced", "--user", "ana", "--password-env", "CGM_TEST_PW"]  # fmt: skip
    assert main(close) == 2  # before the start
    assert "before the start" in capsys.readouterr().err
    close[4] = (now - timedelta(days=2)).isoformat()
    assert main(close) == 0
    assert main(close) == 2  # already closed
    capsys.readouterr()

    assert main(["failure", "list", "--frontier", code, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)[code]
    assert listed == {"year_of_operation": listed["year_of_operation"], "limit": 2, "count": 1,
                      "status": "warning", "failures": [[eid]]}  # fmt: skip
    assert main(["failure", "notice", str(eid)]) == 0
    notice = json.loads(capsys.readouterr().out)
    assert notice["frontera"] == code and notice["elemento"] == "ct"
    assert notice["fin"] is not None and notice["notaCierre"] == "replaced"
    assert notice["tabla5"]["count"] == 1 and notice["tipo"] == "ReporteFalla"


def test_fleet_counts_one_query_applies_backup_rule(cli_db: str) -> None:
    code = _setup(cli_db)
    now = datetime.now(UTC)

    async def go() -> dict[str, failures.Count]:
        async with await psycopg.AsyncConnection.connect(cli_db, autocommit=True) as c:
            t = now - timedelta(days=10)
            await failures.open_event(c, frontier=code, element="principal", kind="failure",
                                      started_at=t, description="d", actor="t")  # fmt: skip
            counts = await failures.fleet_counts(c, now)
            assert counts[code].count == 0  # the backup operated
            await failures.open_event(c, frontier=code, element="backup", kind="failure",
                                      started_at=t + H, description="d", actor="t")  # fmt: skip
            return await failures.fleet_counts(c, now)

    c = asyncio.run(go())[code]
    assert (c.count, c.limit, c.status) == (1, 2, "warning")
