"""HLS-GMAC invocation counters in PostgreSQL: disjoint across collectors and restarts."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest

from cgm.security.counters import CountersExhausted, PgInvocationCounterStore
from drivers.base import AccessLevel, Credentials, Endpoint
from drivers.dlms import DlmsDriver
from simulators.dlms import serve
from simulators.dlms.security import MeterSecurity
from simulators.meter import Secrets, SimulatedMeter

SECRET = "ek=000102030405060708090a0b0c0d0e0f;ak=d0d1d2d3d4d5d6d7d8d9dadbdcdddedf"


def key() -> str:
    return f"test:{uuid.uuid4().hex}"


async def test_two_collectors_never_get_the_same_counter(db_url: str) -> None:
    a, b = PgInvocationCounterStore(db_url), PgInvocationCounterStore(db_url)
    name = key()
    try:
        firsts = await asyncio.gather(
            *(store.reserve(name, 64) for _ in range(25) for store in (a, b))
        )
    finally:
        await a.close()
        await b.close()
    ranges = sorted(firsts)
    assert ranges[0] == 1
    assert all(later - earlier == 64 for earlier, later in zip(ranges, ranges[1:], strict=False))


async def test_a_restarted_collector_continues_after_the_last_range(db_url: str) -> None:
    name = key()
    first = PgInvocationCounterStore(db_url)
    assert await first.reserve(name, 10) == 1
    await first.close()
    again = PgInvocationCounterStore(db_url)  # a new process: nothing in memory
    try:
        assert await again.reserve(name, 10) == 11
        assert await again.reserve(key(), 10) == 1  # another key has its own sequence
    finally:
        await again.close()


async def test_floor_and_exhaustion(db_url: str) -> None:
    name = key()
    store = PgInvocationCounterStore(db_url)
    try:
        assert await store.raise_floor(name, 5_000) == 5_000  # a meter another head-end used
        assert await store.raise_floor(name, 10) == 5_000  # never goes down
        assert await store.reserve(name, 1) == 5_000
        await store.raise_floor(name, 0xFFFF_FFF0)
        with pytest.raises(CountersExhausted):
            await store.reserve(name, 64)
    finally:
        await store.close()


async def test_gmac_sessions_across_a_restart_are_accepted_by_the_meter(db_url: str) -> None:
    """A new driver and store (a restarted collector) keeps counters above the last ones."""
    meter = SimulatedMeter("GMAC-PG", secrets=Secrets("reader-1", SECRET))
    creds = Credentials(AccessLevel.CONFIGURE, SECRET)
    # A system title of our own: the counter sequence is this test's alone.
    params = {"level2_auth": "hls-gmac", "client_system_title": uuid.uuid4().hex[:16]}
    async with await serve(meter, security=MeterSecurity(level2="hls-gmac")) as srv:
        endpoint = Endpoint("127.0.0.1", srv.port)
        for _ in range(3):
            store = PgInvocationCounterStore(db_url)
            try:
                driver = DlmsDriver(counter_store=store)
                async with await driver.connect(endpoint, creds, params) as session:
                    await session.set_clock(datetime.now(UTC))
            finally:
                await store.close()
    seen = srv.stats.invocation_counters
    assert srv.stats.associations == 3 and srv.stats.rejected == 0
    assert seen == sorted(set(seen))
