"""Every answer the DLMS simulator gives in a session parses with dlms-cosem's strict parser.

The driver reads the common GET answers with its own lean parser (drivers/dlms/axdr.py), and
Gurux's client is lenient; this keeps the simulator's encoding checked by a strict,
independent parser: each answer of whole sessions (wrapper, interval and cumulative layouts,
answers in blocks, lists) goes through ``XDlmsApduFactory`` and every data value through
``DlmsDataParser``.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from dlms_cosem import dlms_data
from dlms_cosem.connection import XDlmsApduFactory
from dlms_cosem.protocol import xdlms

from drivers import AccessLevel, Credentials, Endpoint
from drivers.dlms import DlmsDriver
from simulators.dlms import DlmsVariant, serve
from simulators.dlms.server import DlmsServer
from simulators.meter import SimulatedMeter


def _strict(value: bytes) -> None:
    parser = dlms_data.DlmsDataParser()
    parser.parse(bytes(value), limit=1)
    assert parser.buffer_empty, "trailing bytes after the data"


@pytest.mark.parametrize(
    ("variant", "pdu"),
    [(DlmsVariant(), 0xFFFF), (DlmsVariant(profile="cumulative", extra_columns=True), 128)],
    ids=["interval", "cumulative-in-blocks"],
)
async def test_simulator_answers_parse_strictly(
    variant: DlmsVariant, pdu: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    meter = SimulatedMeter("STRICT-1", seed=3)
    answers: list[bytes] = []
    original = DlmsServer._answer

    def record(self, association, meter, client, apdu):  # type: ignore[no-untyped-def]
        answer = original(self, association, meter, client, apdu)
        answers.append(answer)
        return answer

    monkeypatch.setattr(DlmsServer, "_answer", record)
    end = meter.real_now().replace(minute=0, second=0, microsecond=0)
    async with await serve(meter, variant=variant) as srv:
        async with await DlmsDriver().connect(
            Endpoint("127.0.0.1", srv.port),
            Credentials(AccessLevel.READ, "reader-1"),
            {"max_pdu_size": pdu},
        ) as session:
            await session.identify()
            await session.read_clock()
            await session.read_profile_config()
            assert await session.read_profile(end - timedelta(hours=6), end)
            await session.read_registers()
    assert len(answers) >= 7
    blocks = bytearray()
    for raw in answers:
        apdu = XDlmsApduFactory.apdu_from_bytes(raw)
        if isinstance(apdu, xdlms.GetResponseNormal):
            _strict(apdu.data)
        elif isinstance(apdu, xdlms.GetResponseWithList):
            assert all(not isinstance(v, bytes) for v in apdu.response_data)
        elif isinstance(apdu, xdlms.GetResponseWithBlock | xdlms.GetResponseLastBlock):
            blocks += apdu.data
            if isinstance(apdu, xdlms.GetResponseLastBlock):
                if blocks[0] == 1:  # an array (the profile buffer), not a list's item count
                    _strict(blocks)
                blocks.clear()
    if pdu < 0xFFFF:
        assert any(r[:2] == b"\xc4\x02" for r in answers), "no answer came in blocks"
