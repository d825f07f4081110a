"""``cgm probe`` shows the profile layout and what the driver does with each column."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator

import pytest

from cgm.cli import main
from simulators.dlms import DlmsServer, DlmsVariant, serve
from simulators.meter import SimulatedMeter


@pytest.fixture
def dlms_port() -> Iterator[int]:
    """A simulator on its own loop in a thread: the CLI runs its own asyncio.run."""
    meter = SimulatedMeter("PROBE-1", seed=11)
    variant = DlmsVariant(
        profile="cumulative",
        tariffs=2,
        extra_columns=True,
        serial_object=False,
        list_answer="malformed",
    )
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, DlmsServer] = {}

    async def start() -> None:
        holder["srv"] = await serve(meter, variant=variant)
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()))
    thread.start()
    assert ready.wait(10)
    try:
        yield holder["srv"].port
    finally:
        asyncio.run_coroutine_threadsafe(holder["srv"].stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def _probe(port: int, *extra: str) -> list[str]:
    return [
        "probe",
        "--protocol",
        "dlms",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--level",
        "1",
        "--client",
        "32",
        "--secret",
        "reader-1",
        *extra,
    ]


def test_probe_prints_each_column_and_its_use(
    dlms_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_probe(dlms_port)) == 0
    out = capsys.readouterr().out
    lines = [line.split(None, 1)[1] for line in out.splitlines() if line.startswith("  column")]
    assert lines[0].startswith("class 8 0-0:1.0.0.255 attr 2") and lines[0].endswith("clock")
    assert (
        "class 3 1-0:1.8.1.255 attr 2       scaler 0 Wh      cumulative → differenced"
        " → active_import  (tariff 1, summed)" in lines
    )
    assert any(
        "1-0:1.5.0.255 attr 3" in x and "ignored  (demand (last period))" in x for x in lines
    )
    assert any("1-0:32.7.0.255" in x and "ignored  (voltage)" in x for x in lines)
    assert any("0-0:96.10.1.255" in x and x.endswith("status") for x in lines)
    assert "meter     CGMPROBE-1" in out  # identity from the logical device name
    assert "handled   list_fallback" in out  # the malformed list did not stop the probe


def test_probe_json_has_the_layout(dlms_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*_probe(dlms_port), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    columns = out["profile_config"]["columns"]
    assert {c["use"] for c in columns} == {"clock", "cumulative", "ignored", "status"}
    assert out["identity"]["serial"] == "CGMPROBE-1"
    # Hourly values are interval energy (kWh), never a register of thousands of kWh.
    assert out["profile"] and all(0 < e["active_import"] < 1_000 for e in out["profile"])
