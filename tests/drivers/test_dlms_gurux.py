"""The DLMS driver against a meter served by Gurux's server (an independent implementation).

The meter (``tests/fixtures/gurux_server.py``) is the kind issue 10 found in the field: a
load profile of cumulative registers, identity only through the logical device name, LLS at
level 1 and HLS mechanism 2 at level 2, and long answers in blocks.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from drivers.base import (
    AccessLevel,
    AuthenticationFailed,
    Channel,
    Credentials,
    Endpoint,
)
from drivers.dlms import DRIVER
from tests.fixtures.gurux_server import (
    LEVEL1,
    LEVEL2,
    GuruxDlmsServer,
    GuruxMeter,
    connect,
)

HOUR = timedelta(hours=1)
HLS = {"level2_auth": "hls"}


async def test_lls_level1_reads_clock_and_registers(
    gurux: GuruxDlmsServer, gurux_meter: GuruxMeter
) -> None:
    async with await connect(gurux) as session:
        clock = await session.read_clock()
        registers = {r.channel: r.value for r in await session.read_registers()}
    assert abs(clock.offset) < 2.0  # Gurux's +300 deviation read as UTC−5
    last = gurux_meter.rows[-1][1]
    assert registers == {
        Channel.ACTIVE_IMPORT: last[0] / 1000,
        Channel.ACTIVE_EXPORT: last[1] / 1000,
        Channel.REACTIVE_IMPORT: last[2] / 1000,
        Channel.REACTIVE_EXPORT: last[3] / 1000,
    }


async def test_wrong_lls_password_is_authentication_failed(gurux: GuruxDlmsServer) -> None:
    with pytest.raises(AuthenticationFailed):
        await connect(gurux, Credentials(AccessLevel.READ, "not-it", client="32"))


async def test_long_profile_answer_comes_in_blocks(
    gurux: GuruxDlmsServer, gurux_meter: GuruxMeter
) -> None:
    end = gurux_meter.rows[-1][0]
    start = end - 48 * HOUR
    async with await connect(gurux) as session:
        config = await session.read_profile_config()
        entries = await session.read_profile(start, end)
        blocks = session.blocks_received
    assert config.capture_period == HOUR
    assert blocks >= 3  # about 1.7 kB of rows through a 256-byte PDU
    # Entries whose interval starts in [start, end): stamps (interval ends) start + 1 h … end.
    assert [e.start for e in entries] == [start + i * HOUR for i in range(48)]


# --- level 2: HLS mechanism 2 -----------------------------------------------------------------


async def test_hls_level2_sets_the_clock(gurux: GuruxDlmsServer, gurux_meter: GuruxMeter) -> None:
    gurux_meter.clock_offset = timedelta(seconds=-90)
    async with await connect(gurux, LEVEL2, **HLS) as session:
        before = await session.read_clock()
        await session.set_clock(datetime.now(UTC))
        after = await session.read_clock()
    assert before.offset == pytest.approx(-90, abs=2.0)
    assert after.offset == pytest.approx(0, abs=2.0)
    assert len(gurux_meter.clock_sets) == 1


async def test_hls_key_never_crosses_the_link(gurux: GuruxDlmsServer) -> None:
    """dlms-cosem's own mechanism-2 class sends the key as its challenge; ours never does."""
    async with await connect(gurux, LEVEL2, **HLS) as session:
        await session.read_clock()
    assert b"gurux-hls-key-16" not in gurux.received
    assert gurux.received  # the server did see the session


@pytest.mark.parametrize(
    ("creds", "params"),
    [
        (Credentials(AccessLevel.CONFIGURE, "wrong-hls-key-16", client="1"), HLS),
        (LEVEL2, {}),  # the HLS key tried as an LLS password: the meter wants HLS
        (Credentials(AccessLevel.READ, "gurux-l1", client="32"), {"level1_auth": "hls"}),
    ],
)
async def test_hls_refusals_are_authentication_failed(
    gurux: GuruxDlmsServer, creds: Credentials, params: dict[str, str]
) -> None:
    with pytest.raises(AuthenticationFailed):
        await connect(gurux, creds, **params)


# --- HDLC framing (IEC 62056-46) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "lower", "gurux_address"),
    [(1, None, 1), (2, 17, 1 << 7 | 17), (4, 300, 1 << 14 | 300)],
)
async def test_hdlc_addresses_segments_and_blocks(
    gurux_meter: GuruxMeter, size: int, lower: int | None, gurux_address: int
) -> None:
    """Gurux decodes our 1-, 2- and 4-byte server addresses; long answers come segmented."""
    params: dict[str, object] = {"framing": "hdlc", "hdlc_address_size": size}
    if lower is not None:
        params["hdlc_server_lower"] = lower
    end = gurux_meter.rows[-1][0]
    async with GuruxDlmsServer(gurux_meter, "hdlc", server_address=gurux_address) as srv:
        async with await connect(srv, **params) as session:
            clock = await session.read_clock()
            entries = await session.read_profile(end - 30 * HOUR, end)
            frames = session._transport.frames_received
            blocks = session.blocks_received
        async with await connect(srv, LEVEL2, **params, **HLS) as session:
            await session.set_clock(datetime.now(UTC))
    assert srv.errors == []
    assert abs(clock.offset) < 2.0
    assert len(entries) == 30 and blocks >= 3
    assert frames > blocks + 3  # 256-byte blocks in 128-byte HDLC segments
    assert {t for t in srv.targets} == {(gurux_address, 32), (gurux_address, 1)}


async def test_hdlc_wrong_server_address_is_a_timeout(gurux_meter: GuruxMeter) -> None:
    from drivers.base import MeterTimeout

    async with GuruxDlmsServer(gurux_meter, "hdlc", server_address=1 << 7 | 17) as srv:
        with pytest.raises(MeterTimeout):
            await DRIVER.connect(
                Endpoint("127.0.0.1", srv.port),
                LEVEL1,
                {"framing": "hdlc", "hdlc_address_size": 2, "hdlc_server_lower": 18},
                timeout=1.0,
            )
