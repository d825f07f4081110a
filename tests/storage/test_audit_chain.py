"""Tamper evidence: the audit and ingest hash chains verify when intact and report the first
break for an edited row, a deleted row, a cut-off tail, a truncation, rows written with the
chain switched off, and a wrong anchor; concurrent writers still build one unbroken chain.

Tampering needs the table owner to switch the append-only triggers off, so each tampering
test works in a database of its own (the session database's chain stays intact)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from cgm.cli import main
from cgm.config import Settings, get_settings
from cgm.migrate import upgrade
from cgm.storage import Reading, SettledValue, write_readings, write_settled
from cgm.storage.audit import Anchor, verify
from tests.storage.conftest import make_frontiers

T0 = datetime(2026, 3, 1, 5, tzinfo=UTC)
H = timedelta(hours=1)


async def _history(url: str, versions: int = 3) -> None:
    """Batches, superseded readings and settled values: rows in both chains."""
    (fid, mid), = await make_frontiers(url, 1)
    async with await psycopg.AsyncConnection.connect(url) as conn:
        for v in range(versions):
            await write_readings(
                conn, [Reading(mid, 1, T0 + h * H, 10.0 + v, 0, T0 + 48 * H) for h in range(3)],
                source="test", actor="t",
            )
            await write_settled(
                conn, [SettledValue(fid, 1, T0, 5.0 + v, "principal")], actor="vee"
            )


@pytest.fixture
async def chained(new_database: Callable[[], str]) -> str:
    url = new_database()
    upgrade(url, Settings(database_url=url))
    await _history(url)
    return url


def _owner_sql(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for s in statements:
            conn.execute(s)


def _problem(url: str, chain: str) -> str | None:
    report = verify(url)
    return next(c for c in report.chains if c.chain == chain).problem


async def test_intact_chains_verify_and_heads_match_the_rows(chained: str) -> None:
    report = verify(chained)
    assert report.ok, [c.problem for c in report.chains]
    with psycopg.connect(chained) as conn:
        for c in report.chains:
            n, last = conn.execute(
                f"SELECT count(*), max(chain_seq) FROM {c.chain}"  # noqa: S608
            ).fetchone()
            assert c.rows == n == last > 0
            assert c.head is not None and c.head.seq == n
        # Superseded readings and settled values are in the audit chain.
        assert conn.execute(
            "SELECT count(*) FROM audit_log WHERE table_name IN ('reading', 'settled_reading')"
        ).fetchone()[0] == 3 * 2 + 2


async def test_edited_row_is_detected(chained: str) -> None:
    with psycopg.connect(chained) as conn:
        row_id, seq = conn.execute(
            "SELECT id, chain_seq FROM audit_log WHERE table_name = 'reading'"
            " ORDER BY chain_seq LIMIT 1"
        ).fetchone()
    _owner_sql(
        chained,
        "ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_change",
        f"UPDATE audit_log SET old_row = jsonb_set(old_row, '{{value}}', '99') WHERE id = {row_id}",
    )
    assert _problem(chained, "audit_log") == (
        f"row id {row_id} (seq {seq}) was changed after it was written"
    )
    assert _problem(chained, "ingest_batch") is None


async def test_edited_batch_counts_are_detected(chained: str) -> None:
    _owner_sql(
        chained,
        "ALTER TABLE ingest_batch DISABLE TRIGGER ingest_batch_no_change",
        "UPDATE ingest_batch SET inserted = inserted + 1 WHERE chain_seq = 2",
    )
    assert "(seq 2) was changed" in _problem(chained, "ingest_batch")


async def test_committed_batch_cannot_be_updated_even_by_its_owner(chained: str) -> None:
    with psycopg.connect(chained) as conn, pytest.raises(
        psycopg.errors.RaiseException, match="append-only"
    ):
        conn.execute("UPDATE ingest_batch SET inserted = 0")


async def test_deleted_row_is_detected(chained: str) -> None:
    _owner_sql(
        chained,
        "ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_change",
        "DELETE FROM audit_log WHERE chain_seq = 3",
    )
    assert _problem(chained, "audit_log").startswith("rows with chain_seq 3..3 are missing")


async def test_deleted_tail_is_detected(chained: str) -> None:
    _owner_sql(
        chained,
        "ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_change",
        "DELETE FROM audit_log WHERE chain_seq = (SELECT max(chain_seq) FROM audit_log)",
    )
    assert "rows were removed from the end" in _problem(chained, "audit_log")


async def test_truncation_is_refused_and_detected(chained: str) -> None:
    with psycopg.connect(chained) as conn, pytest.raises(
        psycopg.errors.RaiseException, match="TRUNCATE refused"
    ):
        conn.execute("TRUNCATE audit_log")
    _owner_sql(
        chained,
        "ALTER TABLE audit_log DISABLE TRIGGER USER",
        "ALTER TABLE ingest_batch DISABLE TRIGGER USER",
        "TRUNCATE audit_log, ingest_batch",
    )
    for chain in ("audit_log", "ingest_batch"):
        problem = _problem(chained, chain)
        assert problem is not None and "rows end at seq 0" in problem


async def test_rows_written_with_the_chain_off_are_detected(chained: str) -> None:
    with psycopg.connect(chained, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("INSERT INTO audit_log (table_name, op, actor) VALUES ('x', 'D', 'intruder')")
    assert "1 row(s) carry no hash" in _problem(chained, "audit_log")


async def test_anchor_recorded_earlier_must_still_match(chained: str) -> None:
    head = next(c.head for c in verify(chained).chains if c.chain == "audit_log")
    assert head is not None
    assert verify(chained, [head]).ok
    forged = Anchor(head.chain, head.seq, bytes(32))
    assert "does not match the recorded anchor" in _problem_with(chained, forged)
    beyond = Anchor(head.chain, head.seq + 100, head.hash)
    assert "beyond the chain" in _problem_with(chained, beyond)
    assert Anchor.parse(str(head)) == head
    with pytest.raises(ValueError, match="CHAIN:SEQ:HEX"):
        Anchor.parse("audit_log:1:zz")


def _problem_with(url: str, anchor: Anchor) -> str:
    report = verify(url, [anchor])
    return next(c for c in report.chains if c.chain == anchor.chain).problem or ""


async def test_concurrent_writers_build_one_unbroken_chain(
    new_database: Callable[[], str],
) -> None:
    url = new_database()
    upgrade(url, Settings(database_url=url))
    pairs = await make_frontiers(url, 4)

    async def writer(fid: int, mid: int) -> None:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            for v in range(6):
                await write_readings(
                    conn, [Reading(mid, c, T0 + h * H, v + 0.5, 0, T0) for c in (1, 2)
                           for h in range(4)],
                    source="test", actor=f"w{mid}",
                )
                await write_settled(
                    conn, [SettledValue(fid, 1, T0, float(v), "principal")], actor="vee"
                )

    await asyncio.gather(*(writer(f, m) for f, m in pairs))
    report = verify(url)
    assert report.ok, [c.problem for c in report.chains]
    rows = {c.chain: c.rows for c in report.chains}
    # 4 writers × 6 rounds × (readings + settled) batches; 5 supersessions of 8 readings and
    # 1 settled value per writer round after the first, plus the registry inserts.
    assert rows["ingest_batch"] == 4 * 6 * 2
    with psycopg.connect(url) as conn:
        (n,) = conn.execute(
            "SELECT count(*) FROM audit_log WHERE table_name IN ('reading', 'settled_reading')"
        ).fetchone()
    assert n == 4 * 5 * (8 + 1)


async def test_cli_verify_exit_status(
    chained: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CGM_DATABASE_URL", chained)
    get_settings.cache_clear()
    assert main(["audit", "verify"]) == 0
    out = capsys.readouterr().out
    assert "audit_log:" in out and "ok" in out and "head audit_log:" in out
    _owner_sql(
        chained,
        "ALTER TABLE ingest_batch DISABLE TRIGGER ingest_batch_no_change",
        "DELETE FROM ingest_batch WHERE chain_seq = 1",
    )
    assert main(["audit", "verify"]) == 1
    get_settings.cache_clear()
    assert "ingest_batch: " in capsys.readouterr().out
