"""ASIC reporting tests: a database of their own per test (the reporter works fleet-wide),
frontiers with a principal and a backup meter, and the ASIC simulator over real HTTP."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime

import psycopg
import pytest

from cgm.config import Settings
from cgm.localtime import hour_starts
from cgm.migrate import upgrade
from cgm.reporting.asic.delivery import AsicReporter
from cgm.reporting.asic.transport import HttpTransport
from cgm.storage import Reading, SettledValue, write_readings, write_settled
from simulators.asic import AsicSimulator

DAY = date(2026, 3, 1)
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # 07:00 of D+1 in Colombia
BACKUP_CT = 20.0  # backup meter: secondary values × 20 × adjustment factor
ADJUSTMENT = 1.5


@dataclass
class Fr:
    id: int
    code: str
    principal: str
    backup: str
    backup_id: int


@pytest.fixture
def db(new_database: Callable[[], str]) -> str:
    url = new_database()
    upgrade(url, Settings(database_url=url))
    return url


async def make_frontier(db: str, *, backup: bool = True) -> Fr:
    tag = uuid.uuid4().int % 10**9
    code = f"Frt{tag}"
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as c:
        cur = await c.execute(
            """INSERT INTO frontier (code, name, kind, voltage_level, point_type,
                                     adjustment_factor)
               VALUES (%s, 'test', 'generation', 2, 2, %s) RETURNING id""",
            (code, ADJUSTMENT),
        )
        (fid,) = await cur.fetchone()
        bid = 0
        for role, ct in (("principal", 1.0), ("backup", BACKUP_CT))[: 2 if backup else 1]:
            cur = await c.execute(
                """INSERT INTO meter (frontier_id, serial, role, protocol, primary_host,
                                      primary_port, ct_ratio)
                   VALUES (%s, %s, %s, 'dlms', '127.0.0.1', 4059, %s) RETURNING id""",
                (fid, f"{role[0].upper()}{tag}", role, ct),
            )
            (mid,) = await cur.fetchone()
            bid = mid if role == "backup" else bid
    return Fr(fid, code, f"P{tag}", f"B{tag}" if backup else "", bid)


def value(channel: int, period: int, add: float = 0.0) -> float:
    return 100.0 * channel + period + add


async def settle(
    db: str,
    fr: Fr,
    day: date = DAY,
    *,
    channels: tuple[int, ...] = (1, 3),
    estimate: dict[int, str] | None = None,
    add: float = 0.0,
    periods: int = 24,
) -> None:
    """A settled series for ``fr``: measured except the ``estimate`` periods (period → method)."""
    estimate = estimate or {}
    rows = []
    for ch in channels:
        for p, start in enumerate(hour_starts(day)[:periods], 1):
            m = estimate.get(p)
            rows.append(
                SettledValue(
                    fr.id, ch, start, value(ch, p, add), "estimate" if m else "principal", m
                )
            )
    async with await psycopg.AsyncConnection.connect(db) as c:
        await write_settled(c, rows, actor="vee", reason="test")


async def backup_readings(db: str, fr: Fr, day: date = DAY, *, skip: tuple[int, ...] = ()) -> None:
    """The backup meter's own secondary readings: primary value / (CT × adjustment) + 1%."""
    rows = [
        Reading(fr.backup_id, ch, start, value(ch, p) * 1.01 / (BACKUP_CT * ADJUSTMENT), 0, NOW)
        for ch in (1, 3)
        for p, start in enumerate(hour_starts(day), 1)
        if p not in skip
    ]
    async with await psycopg.AsyncConnection.connect(db) as c:
        await write_readings(c, rows, source="test", actor="test")


@pytest.fixture
async def asic() -> AsyncIterator[tuple[AsicSimulator, str]]:
    sim = AsicSimulator(client_id="cgm-test", client_secret="s3cret", cgm_code="CGM0042")
    url = await sim.start()
    yield sim, url
    await sim.stop()


def settings(db: str, url: str, **kw: object) -> Settings:
    kw.setdefault("asic_format", "json_zip")  # the XM XML message has tests of its own
    return Settings(
        database_url=db,
        cgm_code="CGM0042",
        asic_base_url=url,
        asic_client_id="cgm-test",
        asic_client_secret="s3cret",
        **kw,
    )


@pytest.fixture
async def make_reporter(
    db: str, asic: tuple[AsicSimulator, str]
) -> AsyncIterator[Callable[..., AsicReporter]]:
    made: list[HttpTransport] = []

    def make(*, now: datetime = NOW, timeout: float = 5.0, attempts: int = 4,
             renew_margin_s: float = 0.0, **kw: object) -> AsicReporter:  # fmt: skip
        s = settings(db, asic[1], **kw)
        t = HttpTransport(
            asic[1], "cgm-test", "s3cret", s.cgm_code, timeout=timeout, attempts=attempts,
            backoff_s=0.01, renew_margin_s=renew_margin_s,
        )  # fmt: skip
        made.append(t)
        return AsicReporter(db, s, t, now=lambda: now)

    yield make
    for t in made:
        await t.aclose()


async def rows(db: str, sql: str, *args: object) -> list[tuple]:
    async with await psycopg.AsyncConnection.connect(db) as c:
        cur = await c.execute(sql, args)
        return await cur.fetchall()
