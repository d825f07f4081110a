"""``cgm probe`` of an HLS-GMAC meter takes its invocation counters from the database."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import psycopg
import pytest

from cgm.cli import main
from cgm.config import get_settings
from simulators.dlms import DlmsServer, serve
from simulators.dlms.security import MeterSecurity
from simulators.meter import Secrets, SimulatedMeter

SECRET = "ek=0f0e0d0c0b0a09080706050403020100;ak=d0d1d2d3d4d5d6d7d8d9dadbdcdddedf"


@pytest.fixture
def gmac_server() -> Iterator[DlmsServer]:
    """A GMAC meter on its own loop in a thread: the CLI runs its own asyncio.run."""
    meter = SimulatedMeter("PROBE-GMAC", seed=2, secrets=Secrets("reader-1", SECRET))
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, DlmsServer] = {}

    async def start() -> None:
        holder["srv"] = await serve(meter, security=MeterSecurity(level2="hls-gmac"))
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()))
    thread.start()
    assert ready.wait(10)
    try:
        yield holder["srv"]
    finally:
        asyncio.run_coroutine_threadsafe(holder["srv"].stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_two_probes_never_reuse_a_counter(
    gmac_server: DlmsServer,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CGM_DATABASE_URL", db_url)
    monkeypatch.setenv("PROBE_GMAC_KEYS", SECRET)
    get_settings.cache_clear()
    title = "43474d00000000aa"  # this test's own counter sequence
    args = ["probe", "--protocol", "dlms", "--host", "127.0.0.1"]
    args += ["--port", str(gmac_server.port), "--level", "2", "--secret-env", "PROBE_GMAC_KEYS"]
    args += ["--param", "level2_auth=hls-gmac", "--param", f"client_system_title={title}"]
    try:
        assert main(args) == 0
        assert main(args) == 0  # a second process-like run: counters continue, not restart
    finally:
        get_settings.cache_clear()
    assert "PROBE-GMAC" in capsys.readouterr().out
    seen = gmac_server.stats.invocation_counters
    assert gmac_server.stats.associations == 2 and seen == sorted(set(seen))
    with psycopg.connect(db_url) as conn:
        (n,) = conn.execute(
            "SELECT next_value FROM dlms_invocation_counter WHERE counter_key LIKE %s",
            (f"{title}:%",),
        ).fetchone()
    assert n > max(seen)
