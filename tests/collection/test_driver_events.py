"""What a driver handled in a session reaches the outcome and the metrics (no database)."""

from __future__ import annotations

from datetime import timedelta

from prometheus_client import REGISTRY

from cgm.collection.session import interrogate
from cgm.registry import MeterConfig
from drivers.base import ALL_CHANNELS, AccessLevel, Credentials, Endpoint
from drivers.dlms import DlmsDriver
from simulators.dlms import DlmsVariant, serve
from simulators.meter import SimulatedMeter


def _target(port: int, serial: str, **params: object) -> MeterConfig:
    return MeterConfig(
        meter_id=1,
        serial=serial,
        role="principal",
        protocol="dlms",
        endpoints=(Endpoint("127.0.0.1", port),),
        params=params,
        ct_ratio=1.0,
        vt_ratio=1.0,
        channels=ALL_CHANNELS,
        frontier_id=1,
        frontier_code="Frt00001",
        point_type=3,
        clock_limit_s=60.0,
        adjustment_factor=1.0,
        credentials={AccessLevel.READ: Credentials(AccessLevel.READ, "reader-1")},
    )


def _count(kind: str) -> float:
    labels = {"protocol": "dlms", "kind": kind}
    return REGISTRY.get_sample_value("cgm_driver_events_total", labels) or 0.0


async def test_list_fallback_and_cumulative_meter_through_interrogate() -> None:
    meter = SimulatedMeter("EVT-1", seed=12)
    variant = DlmsVariant(profile="cumulative", serial_object=False, list_answer="malformed")
    before = _count("list_fallback")
    async with await serve(meter, variant=variant) as srv:
        now = meter.real_now()
        outcome = await interrogate(
            DlmsDriver(),
            # An LDN-only meter registered by its logical device name; plausibility ratings
            # in the params are the CGM's and must not upset the driver.
            _target(srv.port, "CGMEVT-1", rated_current_a=5),
            since=now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=6),
            now=now,
        )
    assert outcome.result == "ok", outcome.error
    assert [e.kind for e in outcome.events] == ["list_fallback"]
    assert _count("list_fallback") == before + 1
    truth = {e.start: e.values for e in meter.profile(outcome.read_from, outcome.read_to)}
    assert len(outcome.entries) == 6
    for e in outcome.entries:
        assert e.values == truth[e.start]


async def test_identity_mismatch_names_the_object_compared() -> None:
    meter = SimulatedMeter("EVT-2", seed=13)
    async with await serve(meter, variant=DlmsVariant(serial_object=False)) as srv:
        now = meter.real_now()
        outcome = await interrogate(
            DlmsDriver(), _target(srv.port, "EVT-2"), since=now - timedelta(hours=1), now=now
        )
    assert outcome.result == "identity"
    assert "'CGMEVT-2' (0-0:42.0.0.255)" in (outcome.error or "")
