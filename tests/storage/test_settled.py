"""Settled series: idempotent, versioned, and the manual rule VEE relies on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cgm.storage import InvalidRows, SettledValue, UnknownKeys, read_settled, write_settled

T0 = datetime(2026, 3, 1, 5, tzinfo=UTC)
H = timedelta(hours=1)


def day(fid: int, source: str = "principal", add: float = 0.0) -> list[SettledValue]:
    method = "linear" if source == "estimate" else None
    return [
        SettledValue(fid, ch, T0 + h * H, 10.0 * h + ch + add, source, method)
        for ch in (1, 2)
        for h in range(24)
    ]


async def test_idempotent_and_versioned(conn, frontiers) -> None:
    f = frontiers[0]
    r1 = await write_settled(conn, day(f), actor="vee")
    assert (r1.inserted, r1.unchanged, r1.superseded) == (48, 0, 0)
    r2 = await write_settled(conn, day(f), actor="vee")
    assert (r2.inserted, r2.unchanged, r2.superseded) == (0, 48, 0)
    changed = day(f)
    changed[0] = SettledValue(f, 1, T0, 99.0, "backup")
    r3 = await write_settled(conn, changed, actor="vee", reason="principal failed")
    assert (r3.inserted, r3.unchanged, r3.superseded) == (0, 47, 1)
    cur = await conn.execute(
        "SELECT version, value, source FROM settled_version"
        " WHERE frontier_id = %s AND channel = 1 AND interval_start = %s ORDER BY version",
        (f, T0),
    )
    assert await cur.fetchall() == [(1, 1.0, "principal"), (2, 99.0, "backup")]
    cur = await conn.execute(
        "SELECT target, received, inserted, unchanged, superseded FROM ingest_batch WHERE id = %s",
        (r3.batch_id,),
    )
    assert await cur.fetchone() == ("settled_reading", 48, 0, 47, 1)
    await conn.commit()


async def test_manual_survives_automatic_rewrite(conn, frontiers) -> None:
    f = frontiers[1]
    await write_settled(conn, day(f), actor="vee")
    manual = [SettledValue(f, 1, T0 + 3 * H, 42.0, "manual", detail={"ticket": "X-1"})]
    res = await write_settled(conn, manual, actor="ana", reason="meter replaced, agreed value")
    assert res.superseded == 1

    # VEE re-runs with its own values (estimate and principal): the manual value stays.
    for rows in (day(f, "estimate", add=0.5), day(f)):
        res = await write_settled(conn, rows, actor="vee")
        assert res.kept_manual == 1
    got = {(s.channel, s.interval_start): s for s in await read_settled(conn, [f], T0, T0 + 24 * H)}
    kept = got[(1, T0 + 3 * H)]
    assert (kept.value, kept.source, kept.actor, kept.detail) == (
        42.0,
        "manual",
        "ana",
        {"ticket": "X-1"},
    )
    assert got[(1, T0 + 4 * H)].source == "principal"

    # Only another manual write replaces it.
    res = await write_settled(
        conn, [SettledValue(f, 1, T0 + 3 * H, 43.0, "manual")], actor="luis", reason="fix"
    )
    assert res.superseded == 1
    (now,) = [s for s in await read_settled(conn, [f], T0 + 3 * H, T0 + 4 * H, channels=[1])]
    assert (now.value, now.version, now.reason) == (43.0, 3, "fix")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (SettledValue(1, 1, T0, 1.0, "estimate"), "method is required"),
        (SettledValue(1, 1, T0, 1.0, "principal", method="x"), "method is required"),
        (SettledValue(1, 1, T0, float("nan"), "principal"), "finite"),
        (SettledValue(1, 1, T0, 1.0, "guess"), "source"),
        (SettledValue(1, 9, T0, 1.0, "principal"), "unknown channel"),
        (SettledValue(1, 1, datetime(2026, 3, 1), 1.0, "principal"), "naive"),
        (SettledValue(1, 1, T0 + H / 2, 1.0, "principal"), "boundary"),
        (SettledValue(0, 1, T0, 1.0, "principal"), "frontier_id"),
    ],
)
async def test_bad_settled_rejected(conn, row, message) -> None:
    with pytest.raises(InvalidRows, match=message):
        await write_settled(conn, [row], actor="vee")


async def test_manual_needs_reason_and_unknown_frontier(conn, frontiers) -> None:
    with pytest.raises(InvalidRows, match="reason"):
        await write_settled(conn, [SettledValue(frontiers[2], 1, T0, 1.0, "manual")], actor="a")
    with pytest.raises(UnknownKeys, match="unknown frontier"):
        await write_settled(conn, [SettledValue(10**12, 1, T0, 1.0, "principal")], actor="a")
    with pytest.raises(InvalidRows, match="different value"):
        await write_settled(
            conn,
            [SettledValue(frontiers[2], 1, T0, v, "principal") for v in (1.0, 2.0)],
            actor="a",
        )
    assert await read_settled(conn, [frontiers[2]], T0, T0 + H) == []


async def test_stored_keys_behind_a_new_first_key_are_upserted(conn, frontiers) -> None:
    # The day's first hour is new (so the write tries a plain insert first) but later hours
    # are stored, one of them manual: the write still leaves equal values alone, supersedes
    # changed ones and keeps the manual one, with the same counts as an upsert.
    f = frontiers[0]
    rows = day(f)
    await write_settled(conn, rows[5:10], actor="vee")
    manual = [SettledValue(f, 2, T0 + 6 * H, 7.0, "manual")]
    await write_settled(conn, manual, actor="ana", reason="agreed value")
    again = rows[:7] + [SettledValue(f, 1, T0 + 7 * H, 1.5, "backup")] + rows[8:]
    res = await write_settled(conn, again, actor="vee")
    assert (res.inserted, res.unchanged, res.superseded, res.kept_manual) == (42, 4, 1, 1)
    got = {(s.channel, s.interval_start): s for s in await read_settled(conn, [f], T0, T0 + 24 * H)}
    assert len(got) == 48 and got[(1, T0 + 7 * H)].version == 2
    assert (got[(1, T0 + 5 * H)].version, got[(1, T0 + 5 * H)].value) == (1, 51.0)
    await conn.commit()


async def test_free_text_in_detail_and_method_is_stored_as_written(conn, frontiers) -> None:
    """What a user types into a manual value's detail (backslashes, tabs, new lines,
    quotes, accents) and an estimate's inputs come back unchanged, and an equal rewrite is
    unchanged (the objects travel as COPY text formatted by cgm.storage.settled)."""
    f = frontiers[0]
    odd = 'C:\\medidor\t"B"\nlínea 2\r\\N ñ €'
    rows = [
        SettledValue(f, 1, T0, 1.25, "manual", detail={"note": odd, "n": [1, 2.5, None]}),
        SettledValue(f, 1, T0 + H, 1e-7, "estimate", "typical_curve", detail={"days": [odd]}),
        SettledValue(f, 2, T0, 3.0, "backup", detail={}),
    ]
    res = await write_settled(conn, rows, actor="ana", reason="acta 7")
    assert res.inserted == 3
    got = {(s.channel, s.interval_start): s for s in await read_settled(conn, [f], T0, T0 + 2 * H)}
    assert got[(1, T0)].detail == {"note": odd, "n": [1, 2.5, None]}
    assert (got[(1, T0 + H)].value, got[(1, T0 + H)].method) == (1e-7, "typical_curve")
    assert got[(1, T0 + H)].detail["days"] == [odd]
    assert (got[(2, T0)].value, got[(2, T0)].source) == (3.0, "backup")
    again = await write_settled(conn, rows, actor="ana", reason="acta 7")
    assert (again.inserted, again.unchanged, again.superseded) == (0, 3, 0)
    await conn.commit()


def test_first_key_found_without_sorting_is_the_sorted_first() -> None:
    """The first-settle probe asks whether a batch's first key (local day, frontier,
    channel, hour) is stored; found in passes over the key columns, it must be the row a
    sort would put first, across local-day boundaries (05:00 UTC) and ties."""
    import numpy as np

    from cgm.storage.settled import MEASURED_DTYPE, _first_in_key_order, _key_sort

    rng = np.random.default_rng(5)
    for _ in range(200):
        n = int(rng.integers(1, 60))
        a = np.zeros(n, dtype=MEASURED_DTYPE)
        a["frontier_id"], a["channel"] = rng.integers(1, 4, n), rng.integers(1, 3, n)
        hours = rng.integers(0, 72, n).astype("m8[h]")
        a["interval_start"] = np.datetime64("2026-03-01T00:00", "us") + hours
        key = ["frontier_id", "channel", "interval_start"]
        assert a[key][_first_in_key_order(a)] == a[key][_key_sort(a)[0]]


async def test_binary_copy_constants_are_text_columns(conn) -> None:
    """pgbinary.encode's constant columns (settled values' source, actor and reason)."""
    import numpy as np

    from cgm.storage import pgbinary

    data = np.zeros(3, dtype=[("a", "i8"), ("b", "f8")])
    data["a"], data["b"] = [1, 2, 3], [0.5, 1.5, 2.5]
    await conn.execute("CREATE TEMP TABLE copy_consts (a bigint, b float8, s text, e text, u text)")
    consts = [("s", "principal"), ("e", ""), ("u", "ñandú")]
    async with (
        conn.cursor() as c,
        c.copy("COPY copy_consts (a, b, s, e, u) FROM STDIN (FORMAT BINARY)") as copy,
    ):
        await copy.write(pgbinary.encode((("a", "i8"), ("b", "f8")), data, consts))
    cur = await conn.execute("SELECT * FROM copy_consts ORDER BY a")
    assert await cur.fetchall() == [(a, a - 0.5, "principal", "", "ñandú") for a in (1, 2, 3)]


async def test_id_arrays_reach_the_server_as_bigint_arrays(conn) -> None:
    """pgbinary.int8_array: the ids a query's ANY(%s) takes, sent as binary bigint[] — in
    order, beyond 32 bits, empty, and from a numpy array of another integer type."""
    import numpy as np

    from cgm.storage.pgbinary import int8_array

    cases = [[3, 1, 2], [2**40, -(2**40)], [], np.array([7, 8], dtype=np.int32), {9}]
    for ids in cases:
        cur = await conn.execute(
            "SELECT %(a)s, cardinality(%(a)s), 1099511627776 = ANY(%(a)s)", {"a": int8_array(ids)}
        )
        got, n, big = await cur.fetchone()
        assert got == [int(i) for i in ids] and n == len(got) and big == (2**40 in got)


async def test_settled_values_are_found_by_time_with_a_brin_time_index(conn, frontiers) -> None:
    """The time index is a block-range index summarized as ranges fill (migration 0230); a
    query by time alone finds exactly the period's rows, new versions included."""
    cur = await conn.execute(
        "SELECT am.amname, i.reloptions FROM pg_class i JOIN pg_am am ON am.oid = i.relam"
        " WHERE i.relname = 'settled_reading_interval_start'"
    )
    assert await cur.fetchone() == ("brin", ["autosummarize=on"])
    for f in frontiers:
        await write_settled(conn, day(f), actor="vee")
    moved = [SettledValue(frontiers[0], 1, T0 + 5 * H, 7.5, "backup")]
    assert (await write_settled(conn, moved, actor="vee", reason="test")).superseded == 1
    cur = await conn.execute(
        "SELECT frontier_id, channel, interval_start, value FROM settled_reading"
        " WHERE interval_start >= %s AND interval_start < %s AND frontier_id = ANY(%s)"
        " ORDER BY 1, 2, 3",
        (T0 + 4 * H, T0 + 6 * H, frontiers),
    )
    want = sorted(
        (v.frontier_id, v.channel, v.interval_start, v.value)
        for f in frontiers
        for v in day(f)
        if T0 + 4 * H <= v.interval_start < T0 + 6 * H
    )
    changed = (frontiers[0], 1, T0 + 5 * H)
    assert await cur.fetchall() == [
        (f, c, t, 7.5 if (f, c, t) == changed else x) for f, c, t, x in want
    ]
    await conn.rollback()


async def test_an_hour_of_many_series_is_written_at_the_key_s_end(db_url, conn) -> None:
    """settled_reading's key leads with the local day (migration 0240) and settled_day keeps
    room free (0241), so a run's new hour of every series is written together: about 1 KiB
    of WAL per value after a checkpoint. With the series-led key each series' hour landed on
    a leaf page of its own, and each new day's short settled_day rows in the gaps of full
    pages, one per page, each page written whole to the WAL: about 8 KiB per value here."""
    import numpy as np

    from cgm.storage.settled import measured_array

    from .conftest import make_frontiers

    pairs = await make_frontiers(db_url, 300)
    fids = [f for f, _ in pairs]
    series = np.array([(f, c, m) for f, m in pairs for c in (1, 2, 3, 4)], dtype=np.int64)
    hours = 8 * 24  # eight days of history, then one hour more
    t0_us = int(T0.timestamp()) * 1_000_000

    def values(first_hour: int, n_hours: int) -> np.ndarray:
        t = t0_us + np.arange(first_hour, first_hour + n_hours) * 3_600_000_000
        f, c, m = (np.repeat(series[:, k], len(t)) for k in range(3))
        return measured_array(frontier_id=f, channel=c, interval_start=np.tile(t, len(series)),
                              value=1.0, source=1, flags=0, meter_id=m, reading_version=1,
                              secondary=0.0, factor=1.0)  # fmt: skip

    await write_settled(conn, measured=values(0, hours), actor="vee")
    await conn.commit()
    await conn.set_autocommit(True)
    await conn.execute("CHECKPOINT")
    cur = await conn.execute("SELECT pg_current_wal_insert_lsn()")
    (before,) = await cur.fetchone()
    await conn.set_autocommit(False)
    res = await write_settled(conn, measured=values(hours, 1), actor="vee")
    await conn.commit()
    cur = await conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s)", (before,))
    (wal,) = await cur.fetchone()
    await conn.commit()
    assert res.inserted == len(series) == 1200
    assert wal / res.inserted < 2048, f"{wal / res.inserted:.0f} bytes of WAL per value"
    got = await read_settled(conn, [fids[7]], T0 + (hours - 1) * H, T0 + (hours + 1) * H)
    assert [(s.channel, s.interval_start) for s in got] == [
        (c, T0 + h * H) for c in (1, 2, 3, 4) for h in (hours - 1, hours)
    ]


async def test_one_frontier_s_day_is_read_through_the_key_while_the_day_has_no_statistics(
    db_url, conn
) -> None:
    """read_settled looks a frontier up by equality in the day-led key, so reading one
    frontier's day while that day is being settled (statistics still say it is empty) reads
    a few pages, not every frontier's rows of the day (an API read once took 290 ms so)."""
    from .conftest import make_frontiers

    fids = [f for f, _ in await make_frontiers(db_url, 300)]
    old, new = T0 - 24 * H, T0
    for t in (old, new):
        rows = [SettledValue(f, c, t + h * H, 1.0, "principal") for f in fids for c in (1, 2)
                for h in range(24)]  # fmt: skip
        await write_settled(conn, rows, actor="vee", analyze=False)
        await conn.commit()
        if t == old:
            await conn.execute("ANALYZE settled_reading")  # statistics without the new day
            await conn.commit()

    cur = await conn.execute(  # the table, its chunks (TimescaleDB) and their indexes
        """WITH t AS (SELECT 'settled_reading'::regclass::oid AS r UNION ALL
                      SELECT inhrelid FROM pg_inherits
                      WHERE inhparent = 'settled_reading'::regclass)
           SELECT array_agg(r) FROM (SELECT r FROM t UNION ALL
                                     SELECT indexrelid FROM pg_index JOIN t ON indrelid = r) x"""
    )
    (relations,) = await cur.fetchone()
    await conn.commit()

    async def pages() -> int:
        cur = await conn.execute(
            "SELECT sum(pg_stat_get_xact_blocks_fetched(r))::int FROM unnest(%s::oid[]) r",
            (relations,),
        )
        return (await cur.fetchone())[0]

    await read_settled(conn, [fids[0]], new, new + 24 * H)  # plans and catalogs cached
    before = await pages()
    got = await read_settled(conn, [fids[150], fids[151]], new, new + 24 * H)
    fetched = await pages() - before
    await conn.rollback()
    assert len(got) == 2 * 2 * 24
    assert fetched < 40, f"{fetched} pages fetched for two frontiers' day"
