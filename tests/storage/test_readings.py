"""The readings write path against a real database: idempotence, versions, audit, input
checks, in-batch duplicates, direct-COPY vs staging equivalence, concurrent writers."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import pytest

from cgm.storage import (
    READING_DTYPE,
    InvalidRows,
    Quality,
    Reading,
    UnknownKeys,
    last_interval,
    read_readings,
    readings_array,
    write_readings,
)
from drivers.base import Channel, EntryStatus

T0 = datetime(2026, 3, 1, 5, tzinfo=UTC)  # 00:00 Colombia
H = timedelta(hours=1)
COLLECTED = datetime(2026, 3, 10, tzinfo=UTC)


def grid(meters: list[int], hours: int, seed: int = 0, start: datetime = T0) -> np.ndarray:
    """All channels of ``meters`` for ``hours`` hours, shuffled."""
    rng = np.random.default_rng(seed)
    m, c, h = np.meshgrid(meters, [1, 2, 3, 4], np.arange(hours), indexing="ij")
    t = np.datetime64(start.replace(tzinfo=None), "us") + h.ravel().astype("m8[h]")
    rows = readings_array(
        m.ravel(),
        c.ravel(),
        t,
        np.round(rng.uniform(0, 500, m.size), 3),
        0,
        np.datetime64(COLLECTED.replace(tzinfo=None), "us"),
    )
    return rows[rng.permutation(len(rows))]


async def count(conn: psycopg.AsyncConnection, sql: str, *args: object) -> int:
    cur = await conn.execute(sql, args)
    (n,) = await cur.fetchone()
    await conn.commit()
    return n


async def audit_rows(conn: psycopg.AsyncConnection, meters: list[int]) -> int:
    return await count(
        conn,
        "SELECT count(*) FROM audit_log WHERE table_name = 'reading'"
        " AND (old_row ->> 'meter_id')::bigint = ANY(%s)",
        meters,
    )


async def test_rewrite_is_idempotent(conn, meters) -> None:
    rows = grid(meters, 24)
    first = await write_readings(conn, rows, source="test", actor="t")
    assert (first.received, first.inserted, first.unchanged, first.superseded) == (288, 288, 0, 0)
    again = await write_readings(conn, rows[::-1].copy(), source="test", actor="t")
    assert (again.inserted, again.unchanged, again.superseded) == (0, 288, 0)
    n = await count(conn, "SELECT count(*) FROM reading WHERE meter_id = ANY(%s)", meters)
    assert n == 288
    assert (
        await count(
            conn, "SELECT count(*) FROM reading WHERE meter_id = ANY(%s) AND version > 1", meters
        )
        == 0
    )
    assert await audit_rows(conn, meters) == 0
    cur = await conn.execute(
        "SELECT source, actor, received, inserted, unchanged, superseded, target"
        " FROM ingest_batch WHERE id = ANY(%s) ORDER BY id",
        ([first.batch_id, again.batch_id],),
    )
    assert await cur.fetchall() == [
        ("test", "t", 288, 288, 0, 0, "reading"),
        ("test", "t", 288, 0, 288, 0, "reading"),
    ]


async def test_late_different_value_is_a_new_version(conn, meters) -> None:
    m = meters[0]
    r1 = Reading(m, Channel.ACTIVE_IMPORT, T0, 12.5, 0, COLLECTED)
    await write_readings(conn, [r1], source="collector", actor="svc")
    late = Reading(m, "active_import", T0, 13.0, int(Quality.METER_POWER_DOWN), COLLECTED + H)
    res = await write_readings(conn, [late], source="collector", actor="svc", reason="re-read")
    assert (res.inserted, res.unchanged, res.superseded) == (0, 0, 1)

    cur = await conn.execute(
        "SELECT version, value, quality, superseded_by FROM reading_version"
        " WHERE meter_id = %s AND channel = 1 AND interval_start = %s ORDER BY version",
        (m, T0),
    )
    assert await cur.fetchall() == [(1, 12.5, 0, "svc"), (2, 13.0, 0x80, None)]
    cur = await conn.execute(
        "SELECT op, (old_row->>'value')::float8, (new_row->>'value')::float8, actor, reason"
        " FROM audit_log WHERE table_name = 'reading' AND (old_row->>'meter_id')::bigint = %s",
        (m,),
    )
    assert await cur.fetchall() == [
        ("U", 12.5, 13.0, "svc", f"ingest_batch {res.batch_id}: re-read")
    ]
    await conn.commit()

    # The same late value again: unchanged, no third version.
    res = await write_readings(conn, [late], source="collector", actor="svc")
    assert (res.inserted, res.unchanged, res.superseded) == (0, 1, 0)
    assert await audit_rows(conn, [m]) == 1


async def test_same_value_late_is_unchanged(conn, meters) -> None:
    rows = grid(meters[:1], 3)
    await write_readings(conn, rows, source="test", actor=None)
    rows["collected_at"] += np.timedelta64(5, "h")  # re-collected later, same values
    res = await write_readings(conn, rows, source="test", actor=None)
    assert (res.inserted, res.unchanged, res.superseded) == (0, 12, 0)
    got = await read_readings(conn, meters[:1], T0, T0 + 3 * H)
    assert (got["collected_at"] == np.datetime64(COLLECTED.replace(tzinfo=None), "us")).all()
    assert (got["version"] == 1).all()


def _one(**over: object) -> dict[str, object]:
    row = dict(
        meter_id=1, channel=1, interval_start=T0, value=1.0, quality=0, collected_at=COLLECTED
    )
    row.update(over)
    return {k: [v] for k, v in row.items()}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"interval_start": datetime(2026, 3, 1, 5)}, "naive"),
        ({"collected_at": datetime(2026, 3, 1, 5)}, "naive"),
        ({"interval_start": T0 + timedelta(minutes=15)}, "not on a 1:00:00 boundary"),
        ({"value": math.nan}, "value is NaN"),
        ({"value": math.inf}, "value is infinite"),
        ({"value": -0.5}, "value is negative"),
        ({"channel": 7}, "unknown channel"),
        ({"channel": "reactive_sideways"}, "unknown channel"),
        ({"meter_id": -3}, "meter_id must be >= 1"),
        ({"quality": 1 << 20}, "quality has undefined bits"),
        ({"interval_start": np.datetime64("NaT", "us")}, "interval_start missing"),
    ],
)
async def test_bad_input_rejected_before_writing(conn, meters, override, message) -> None:
    good = readings_array(**_one(meter_id=meters[0]))
    bad_cols = _one(**{"meter_id": meters[0], "interval_start": T0 + H, **override})
    before = await count(conn, "SELECT count(*) FROM ingest_batch")
    with pytest.raises(InvalidRows, match=message) as exc:
        bad = readings_array(**bad_cols)
        await write_readings(conn, np.concatenate([good, bad]), source="t", actor=None)
    assert "nothing written" in str(exc.value)
    assert await count(conn, "SELECT count(*) FROM reading WHERE meter_id = %s", meters[0]) == 0
    assert await count(conn, "SELECT count(*) FROM ingest_batch") == before


async def test_problems_are_all_listed(conn, meters) -> None:
    rows = grid(meters[:1], 2)
    rows["value"][0] = np.nan
    rows["channel"][1] = 9
    with pytest.raises(InvalidRows) as exc:
        await write_readings(conn, rows, source="t", actor=None)
    assert len(exc.value.problems) == 2


async def test_unknown_meter_rejected(conn, meters) -> None:
    rows = readings_array(**_one(meter_id=10**12))
    with pytest.raises(UnknownKeys, match=r"unknown meter id\(s\) \[1000000000000\]"):
        await write_readings(conn, rows, source="t", actor=None)
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


async def test_duplicates_in_batch(conn, meters) -> None:
    m = meters[0]
    same = [Reading(m, 1, T0, 5.0, 0, COLLECTED), Reading(m, 1, T0, 5.0, 0, COLLECTED + H)]
    res = await write_readings(conn, same, source="t", actor=None)
    assert (res.received, res.inserted) == (2, 1)
    got = await read_readings(conn, [m], T0, T0 + H)
    assert got["collected_at"].tolist() == [COLLECTED.replace(tzinfo=None)]  # first kept

    clash = [Reading(m, 2, T0, 5.0, 0, COLLECTED), Reading(m, 2, T0, 6.0, 0, COLLECTED)]
    with pytest.raises(InvalidRows, match="different values in one batch"):
        await write_readings(conn, clash, source="t", actor=None)
    assert (
        await count(conn, "SELECT count(*) FROM reading WHERE meter_id = %s AND channel = 2", m)
        == 0
    )


async def test_failed_batch_leaves_nothing(conn, meters) -> None:
    rows = grid(meters[:1], 4)
    before = await count(conn, "SELECT count(*) FROM ingest_batch")
    with pytest.raises(RuntimeError):
        async with conn.transaction():
            await write_readings(conn, rows, source="t", actor=None)
            raise RuntimeError("caller fails after the write")
    assert await count(conn, "SELECT count(*) FROM reading WHERE meter_id = %s", meters[0]) == 0
    assert await count(conn, "SELECT count(*) FROM ingest_batch") == before


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_direct_and_staging_paths_agree(db_url, seed) -> None:
    """The same history of batches through both paths gives the same table and counts."""
    from tests.storage.conftest import make_frontiers

    rng = np.random.default_rng(seed)
    a = [m for _, m in await make_frontiers(db_url, 2)]
    b = [m for _, m in await make_frontiers(db_url, 2)]
    batches = []
    for i in range(8):  # overlapping windows: new, old, changed and equal values mixed
        if i >= 3 and i % 2:  # a re-read of an earlier batch, a few values changed
            rows = batches[int(rng.integers(0, i))].copy()
            rows["value"][rng.random(len(rows)) < 0.2] += 1
            rows["quality"][rng.random(len(rows)) < 0.1] = int(Quality.SUSPECT)
        else:
            start = T0 + int(rng.integers(0, 12)) * H
            rows = grid([0, 1], int(rng.integers(1, 10)), seed=seed * 10 + i, start=start)
        rows = rows[rng.random(len(rows)) < 0.8]
        batches.append(rows)
    # Scattered late values (every third interval, half changed): the sparse-key lookup.
    sparse = np.sort(batches[-1], order=["meter_id", "channel", "interval_start"])[::3].copy()
    sparse["value"][::2] += 7
    batches.append(sparse)
    results = {}
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        for name, ids, direct in (("direct", a, True), ("staging", b, False)):
            counts = []
            for rows in batches:
                r = rows.copy()
                r["meter_id"] = np.asarray(ids)[r["meter_id"]]
                res = await write_readings(conn, r, source="t", actor=None, fast=direct)
                counts.append((res.inserted, res.unchanged, res.superseded))
            got = await read_readings(conn, ids, T0 - 24 * H, T0 + 48 * H)
            got["meter_id"] = np.searchsorted(ids, got["meter_id"])
            results[name] = (counts, got)
    assert results["direct"][0] == results["staging"][0]
    assert any(c[1] for c in results["direct"][0])  # some batches had unchanged rows
    np.testing.assert_array_equal(results["direct"][1], results["staging"][1])
    assert len(results["direct"][1]) > 0


async def test_direct_path_used_for_new_intervals(conn, meters) -> None:
    first = await write_readings(conn, grid(meters, 5), source="t", actor=None)
    assert first.direct == first.inserted == 60
    # Hours 3..7: 3..4 exist (staging), 5..7 are new (direct).
    res = await write_readings(conn, grid(meters, 5, start=T0 + 3 * H), source="t", actor=None)
    assert (res.direct, res.inserted, res.superseded) == (36, 36, 24)


async def test_concurrent_overlapping_writers(db_url) -> None:
    from tests.storage.conftest import make_frontiers

    ids = [m for _, m in await make_frontiers(db_url, 4)]
    a = grid(ids, 48, seed=1)
    b = grid(ids, 48, seed=1, start=T0 + 24 * H)  # overlaps a for 24 hours
    # Half the overlapping intervals get different values in b.
    overlap = b["interval_start"] < np.datetime64((T0 + 48 * H).replace(tzinfo=None), "us")
    b["value"][overlap & (np.arange(len(b)) % 2 == 0)] += 1000

    async def writer(rows: np.ndarray) -> tuple[int, int, int]:
        async with await psycopg.AsyncConnection.connect(db_url) as c:
            total = [0, 0, 0]
            for chunk in np.array_split(rows, 4):
                r = await write_readings(c, chunk, source="t", actor=None)
                total = [total[0] + r.inserted, total[1] + r.unchanged, total[2] + r.superseded]
            return tuple(total)

    for _ in range(3):
        ra, rb = await asyncio.gather(writer(a), writer(b))
        async with await psycopg.AsyncConnection.connect(db_url) as c:
            got = await read_readings(c, ids, T0, T0 + 72 * H)
            keys = len(np.unique(np.concatenate([a, b])[["meter_id", "channel", "interval_start"]]))
            assert len(got) == keys == 4 * 4 * 72
            versions = await count(
                c, "SELECT count(*) FROM reading_version WHERE meter_id = ANY(%s)", ids
            )
        # Every write is accounted for: each row inserted, unchanged or superseded once.
        assert sum(ra) == len(a) and sum(rb) == len(b)
        # Versions: one per key plus one per superseding write.
        assert versions == len(got) + int(got["version"].sum() - len(got))
        assert int(got["version"].sum() - len(got)) == await count(
            c_ := await psycopg.AsyncConnection.connect(db_url),
            "SELECT count(*) FROM audit_log WHERE table_name = 'reading'"
            " AND (old_row->>'meter_id')::bigint = ANY(%s)",
            ids,
        )
        await c_.close()
        # The current value of each overlapping key is one of the two written values.
        cur_vals = dict(
            zip(
                map(tuple, got[["meter_id", "channel", "interval_start"]].tolist()),
                got["value"].tolist(),
                strict=True,
            )
        )
        for row in np.concatenate([a, b]).tolist():
            assert cur_vals[tuple(row[:3])] in {
                v
                for r2 in (a, b)
                for v in r2["value"][
                    (r2["meter_id"] == row[0])
                    & (r2["channel"] == row[1])
                    & (r2["interval_start"] == row[2])
                ].tolist()
            }


async def test_queries(conn, meters) -> None:
    await write_readings(conn, grid(meters[:2], 6), source="t", actor=None)
    late = readings_array(meters[0], Channel.REACTIVE_EXPORT, T0 + 9 * H, 1.0, 0, COLLECTED)
    await write_readings(conn, late, source="t", actor=None)
    last = await last_interval(conn, meters)
    assert last == {meters[0]: T0 + 9 * H, meters[1]: T0 + 5 * H}
    assert (await last_interval(conn, meters[:1], channels=[1]))[meters[0]] == T0 + 5 * H
    got = await read_readings(conn, meters[:1], T0 + H, T0 + 3 * H, channels=["active_import"])
    assert got.dtype.names[:6] == READING_DTYPE.names
    assert got["interval_start"].tolist() == [
        (T0 + H).replace(tzinfo=None),
        (T0 + 2 * H).replace(tzinfo=None),
    ]
    with pytest.raises(ValueError, match="naive"):
        await read_readings(conn, meters, datetime(2026, 1, 1), T0)


def test_quality_bits_carry_meter_status() -> None:
    for status in EntryStatus:
        assert Quality(int(status)).value == status.value
    assert Quality.ESTIMATED > 0xFF


async def test_direct_copy_race_falls_back_to_upsert(db_url) -> None:
    """B decides its rows are new, A commits the same keys first: B's direct COPY fails on
    the key and the batch goes through the upsert instead (unchanged / superseded)."""
    from tests.storage.conftest import make_frontiers

    ids = [m for _, m in await make_frontiers(db_url, 1)]
    rows_a = grid(ids, 6, seed=4)
    rows_b = rows_a.copy()
    rows_b["value"][:5] += 1
    async with (
        await psycopg.AsyncConnection.connect(db_url) as a,
        await psycopg.AsyncConnection.connect(db_url) as b,
    ):
        async with a.transaction():
            ra = await write_readings(a, rows_a, source="a", actor=None)
            task = asyncio.create_task(write_readings(b, rows_b, source="b", actor=None))
            await asyncio.sleep(0.5)  # B has found no stored rows and waits on A's keys
            assert not task.done()
        rb = await task
    assert (ra.inserted, ra.direct) == (24, 24)
    assert (rb.direct, rb.inserted, rb.unchanged, rb.superseded) == (0, 0, 19, 5)
