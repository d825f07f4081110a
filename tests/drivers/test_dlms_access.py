"""DLMS authentication per level and framing, driver against the simulator over real sockets.

The simulator's security (simulators/dlms/security.py) is written apart from the driver's,
and Gurux's client checks the simulator independently.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from drivers.base import AccessLevel, AuthenticationFailed, Credentials, Endpoint
from drivers.dlms import DRIVER, DlmsParams
from drivers.dlms.security import HlsAes128Authentication, aes_ecb_blocks
from simulators.dlms import serve
from simulators.dlms.security import MeterSecurity, aes128_ecb
from simulators.meter import Secrets, SimulatedMeter
from tests.fixtures.gurux_client import gurux_link

HLS_KEY = "hls-key-0123456"  # 15 bytes: padded to 16 on both sides
LEVEL2 = Credentials(AccessLevel.CONFIGURE, HLS_KEY)


def hls_meter() -> SimulatedMeter:
    return SimulatedMeter("HLS-1", seed=3, secrets=Secrets("reader-1", HLS_KEY))


async def test_hls_level2_reads_and_sets_clock() -> None:
    meter = hls_meter()
    meter.set_clock(meter.real_now() + timedelta(seconds=60))
    meter.clock_adjustments.clear()
    async with await serve(meter, security=MeterSecurity(level2="hls")) as srv:
        endpoint = Endpoint("127.0.0.1", srv.port)
        async with await DRIVER.connect(endpoint, LEVEL2, {"level2_auth": "hls"}) as session:
            assert (await session.read_clock()).offset == pytest.approx(60, abs=1.0)
            await session.set_clock(datetime.now(UTC))
        # Level 1 of the same meter still uses LLS.
        level1 = Credentials(AccessLevel.READ, "reader-1")
        async with await DRIVER.connect(endpoint, level1, {"level2_auth": "hls"}) as session:
            assert (await session.read_clock()).offset == pytest.approx(0, abs=1.0)
    assert len(meter.clock_adjustments) == 1
    assert srv.stats.associations == 2


@pytest.mark.parametrize(
    ("secret", "params"),
    [
        ("wrong-key-01234", {"level2_auth": "hls"}),  # wrong key: pass 3 refused
        (HLS_KEY, {}),  # LLS offered to a level that wants HLS: AARE refused
    ],
)
async def test_hls_refusals(secret: str, params: dict[str, str]) -> None:
    async with await serve(hls_meter(), security=MeterSecurity(level2="hls")) as srv:
        with pytest.raises(AuthenticationFailed):
            await DRIVER.connect(
                Endpoint("127.0.0.1", srv.port),
                Credentials(AccessLevel.CONFIGURE, secret),
                params,
                timeout=5,
            )
    assert srv.stats.associations == 0 and srv.stats.rejected == 1


def test_hls_challenge_is_random_and_never_the_key() -> None:
    a, b = HlsAes128Authentication(HLS_KEY.encode()), HlsAes128Authentication(HLS_KEY.encode())
    assert a.get_calling_authentication_value() != b.get_calling_authentication_value()
    assert HLS_KEY.encode() not in a.get_calling_authentication_value()
    assert len(a.get_calling_authentication_value()) == 16
    assert HLS_KEY not in repr(a)


def test_mechanism2_matches_the_aes_test_vector() -> None:
    # FIPS-197 appendix C.1: AES-128, key 000102…0f, plaintext 00112233…ff.
    key = bytes(range(16))
    plain = bytes.fromhex("00112233445566778899aabbccddeeff")
    expected = bytes.fromhex("69c4e0d86a7b0430d8cdb78070b4c55a")
    assert aes_ecb_blocks(key, plain) == expected == aes128_ecb(key, plain)


@pytest.mark.parametrize(
    "params",
    [
        {"level2_auth": "md5"},
        {"client_system_title": "0102"},
        {"framing": "serial"},
        {"framing": "hdlc", "hdlc_address_size": 3},
        {"framing": "hdlc", "hdlc_address_size": 2},  # 2 bytes need a lower address
        {"framing": "hdlc", "hdlc_address_size": 2, "hdlc_server_lower": 200},  # > 127
    ],
)
def test_bad_access_params_are_refused(params: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        DlmsParams.from_mapping(params)


# --- independent check: Gurux's client against the simulator's HLS ---------------------------


def _gurux_hls(port: int, key: str) -> bool:
    """Gurux's client associates with HLS mechanism 2 at the management client SAP."""
    from gurux_dlms.enums import Authentication, InterfaceType
    from gurux_dlms.objects import GXDLMSClock
    from gurux_dlms.secure import GXDLMSSecureClient

    client = GXDLMSSecureClient(True, 1, 1, Authentication.HIGH, key, InterfaceType.WRAPPER)
    with gurux_link(port, client) as link:
        link.associate()
        clock = link.read(GXDLMSClock("0.0.1.0.0.255"))
    return abs((clock.time.value - datetime.now(UTC)).total_seconds()) < 2


async def test_gurux_client_passes_the_simulators_hls() -> None:
    async with await serve(hls_meter(), security=MeterSecurity(level2="hls")) as srv:
        assert await asyncio.to_thread(_gurux_hls, srv.port, HLS_KEY)
        with pytest.raises(Exception):  # noqa: B017 - Gurux raises its own exception types
            await asyncio.to_thread(_gurux_hls, srv.port, "wrong-key-01234")
    assert srv.stats.associations == 1


# --- HDLC framing --------------------------------------------------------------------------


def _hdlc_params(size: int, lower: int | None, **extra: object) -> dict[str, object]:
    params: dict[str, object] = {"framing": "hdlc", "hdlc_address_size": size}
    if lower is not None:
        params["hdlc_server_lower"] = lower
    return params | extra


@pytest.mark.parametrize(("size", "lower"), [(1, None), (2, 17), (4, 1234)])
async def test_hdlc_with_segmented_requests_and_answers(size: int, lower: int | None) -> None:
    """32-byte information fields from the client: the AARQ and GETs go out in segments."""
    meter = hls_meter()
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    params = _hdlc_params(size, lower, hdlc_max_info=32, level2_auth="hls")
    async with await serve(
        meter,
        security=MeterSecurity(level2="hls"),
        framing="hdlc",
        hdlc_lower=lower,
        hdlc_address_size=size,
    ) as srv:
        endpoint = Endpoint("127.0.0.1", srv.port)
        level1 = Credentials(AccessLevel.READ, "reader-1")
        async with await DRIVER.connect(endpoint, level1, params) as session:
            identity = await session.identify()
            entries = await session.read_profile(now - timedelta(hours=48), now)
            sent, requests = session._transport.frames_sent, session.requests_sent
        async with await DRIVER.connect(endpoint, LEVEL2, params) as session:
            await session.set_clock(datetime.now(UTC))
    assert identity.serial == "HLS-1"
    expected = meter.profile(now - timedelta(hours=48), now)
    assert [e.start for e in entries] == [e.start for e in expected]
    assert entries[5].values == pytest.approx(expected[5].values)
    assert srv.stats.blocks_sent >= 2
    assert sent > 2 * requests  # SNRM, and requests of more than 32 bytes in segments
    assert len(meter.clock_adjustments) == 1


async def test_hdlc_to_another_station_gets_no_answer() -> None:
    async with await serve(hls_meter(), framing="hdlc", hdlc_lower=17, hdlc_address_size=2) as srv:
        from drivers.base import MeterTimeout

        with pytest.raises(MeterTimeout):
            await DRIVER.connect(
                Endpoint("127.0.0.1", srv.port),
                Credentials(AccessLevel.READ, "reader-1"),
                _hdlc_params(2, 18),
                timeout=1.0,
            )


def _gurux_hdlc(port: int) -> str:
    """Gurux's client: SNRM/UA, AARQ, GET serial, release, DISC, over HDLC with a 4-byte
    server address (upper 1, lower 1234)."""
    from gurux_dlms import GXDLMSClient
    from gurux_dlms.enums import Authentication, InterfaceType
    from gurux_dlms.objects import GXDLMSData

    server = GXDLMSClient.getServerAddress(1, 1234, 4)
    client = GXDLMSClient(True, 0x20, server, Authentication.LOW, "reader-1", InterfaceType.HDLC)
    with gurux_link(port, client) as link:
        client.parseUAResponse(link.exchange(client.snrmRequest()).data)
        link.associate()
        serial = link.read(GXDLMSData("0.0.96.1.0.255"))
        link.exchange(client.releaseRequest())
        link.exchange(client.disconnectRequest())
    return bytes(serial.value).decode()


async def test_gurux_client_reads_the_simulator_over_hdlc() -> None:
    async with await serve(
        hls_meter(), framing="hdlc", hdlc_lower=1234, hdlc_address_size=4
    ) as srv:
        assert await asyncio.to_thread(_gurux_hdlc, srv.port) == "HLS-1"


# --- HLS-GMAC (mechanism 5) with global ciphering --------------------------------------------

EK = "000102030405060708090a0b0c0d0e0f"
AK = "d0d1d2d3d4d5d6d7d8d9dadbdcdddedf"
GMAC_SECRET = f"ek={EK};ak={AK}"
GMAC = {"level2_auth": "hls-gmac"}


def gmac_meter() -> SimulatedMeter:
    return SimulatedMeter("GMAC-1", seed=5, secrets=Secrets("reader-1", GMAC_SECRET))


@pytest.mark.parametrize("framing", ["wrapper", "hdlc"])
async def test_gmac_level2_ciphers_every_apdu(framing: str) -> None:
    from drivers.dlms import DlmsDriver
    from drivers.dlms.security import MemoryCounterStore

    meter = gmac_meter()
    meter.set_clock(meter.real_now() + timedelta(seconds=-40))
    meter.clock_adjustments.clear()
    driver = DlmsDriver(counter_store=MemoryCounterStore())
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    creds = Credentials(AccessLevel.CONFIGURE, GMAC_SECRET)
    params = {**GMAC, "framing": framing}
    # A 512-byte PDU: ciphered blocks longer than 255 bytes need the long A-XDR length.
    async with await serve(
        meter, security=MeterSecurity(level2="hls-gmac"), framing=framing, max_pdu_size=512
    ) as srv:
        endpoint = Endpoint("127.0.0.1", srv.port)
        async with await driver.connect(endpoint, creds, params) as session:
            entries = await session.read_profile(now - timedelta(hours=48), now)
            assert (await session.read_clock()).offset == pytest.approx(-40, abs=1.0)
            await session.set_clock(datetime.now(UTC))
        async with await driver.connect(endpoint, creds, params) as session:
            assert (await session.read_clock()).offset == pytest.approx(0, abs=1.0)
    expected = meter.profile(now - timedelta(hours=48), now)
    assert [e.values for e in entries] == [pytest.approx(e.values) for e in expected]
    assert srv.stats.blocks_sent >= 2 and srv.stats.associations == 2
    seen = srv.stats.invocation_counters
    assert seen == sorted(set(seen)) and seen[0] >= 1  # strictly increasing, never reused
    assert len(meter.clock_adjustments) == 1


async def test_gmac_wrong_keys_and_missing_store() -> None:
    from drivers.dlms import DlmsDriver
    from drivers.dlms.security import MemoryCounterStore

    wrong = f"ek={AK};ak={EK}"
    async with await serve(gmac_meter(), security=MeterSecurity(level2="hls-gmac")) as srv:
        endpoint = Endpoint("127.0.0.1", srv.port)
        driver = DlmsDriver(counter_store=MemoryCounterStore())
        with pytest.raises(AuthenticationFailed):
            await driver.connect(endpoint, Credentials(AccessLevel.CONFIGURE, wrong), GMAC)
        with pytest.raises(ValueError, match="counter store"):
            await DlmsDriver().connect(
                endpoint, Credentials(AccessLevel.CONFIGURE, GMAC_SECRET), GMAC
            )
        with pytest.raises(ValueError, match="ek="):
            await driver.connect(endpoint, Credentials(AccessLevel.CONFIGURE, "password"), GMAC)
    assert srv.stats.associations == 0


async def test_gmac_counters_that_restart_are_refused_by_the_meter() -> None:
    """Why counters are persisted: a collector that forgot them is refused, never obeyed."""
    from drivers.dlms import DlmsDriver
    from drivers.dlms.security import MemoryCounterStore

    creds = Credentials(AccessLevel.CONFIGURE, GMAC_SECRET)
    async with await serve(gmac_meter(), security=MeterSecurity(level2="hls-gmac")) as srv:
        endpoint = Endpoint("127.0.0.1", srv.port)
        async with await DlmsDriver(MemoryCounterStore()).connect(endpoint, creds, GMAC) as s:
            await s.read_clock()
        with pytest.raises(AuthenticationFailed):  # same counters again: replay refused
            await DlmsDriver(MemoryCounterStore()).connect(endpoint, creds, GMAC)
    assert srv.stats.associations == 1 and srv.stats.rejected == 1


async def test_hdlc_meter_with_small_buffers_gets_short_segments() -> None:
    """The meter's UA says it receives 40-byte information fields: the driver obeys."""
    async with await serve(hls_meter(), framing="hdlc") as srv:
        srv.hdlc_max_receive = 40  # the simulator discards anything longer
        async with await DRIVER.connect(
            Endpoint("127.0.0.1", srv.port),
            Credentials(AccessLevel.READ, "reader-1"),
            {"framing": "hdlc"},
            timeout=3,
        ) as session:
            assert (await session.identify()).serial == "HLS-1"
            assert session._transport.max_info == 40


def _gurux_gmac(port: int, ek: str, title: str = "4752580000000001") -> str:
    """Gurux's client with HLS-GMAC and its own GCM: glo-initiate, pass 3/4, a ciphered GET."""
    from gurux_dlms.enums import Authentication, InterfaceType, Security
    from gurux_dlms.objects import GXDLMSData
    from gurux_dlms.secure import GXDLMSSecureClient

    client = GXDLMSSecureClient(True, 1, 1, Authentication.HIGH_GMAC, None, InterfaceType.WRAPPER)
    cipher = client.settings.cipher
    cipher.security = Security.AUTHENTICATION_ENCRYPTION
    cipher.systemTitle = bytes.fromhex(title)
    cipher.blockCipherKey, cipher.authenticationKey = bytes.fromhex(ek), bytes.fromhex(AK)
    cipher.invocationCounter = 100
    with gurux_link(port, client) as link:
        link.associate()
        serial = link.read(GXDLMSData("0.0.96.1.0.255"))
    return bytes(serial.value).decode()


async def test_gurux_client_passes_the_simulators_gmac() -> None:
    """An independent GCM and HLS-GMAC implementation agrees with the simulator's."""
    async with await serve(gmac_meter(), security=MeterSecurity(level2="hls-gmac")) as srv:
        assert await asyncio.to_thread(_gurux_gmac, srv.port, EK) == "GMAC-1"
        with pytest.raises(Exception):  # noqa: B017 - Gurux raises its own exception types
            # Wrong encryption key, from another system title (so not refused as a replay).
            await asyncio.to_thread(_gurux_gmac, srv.port, AK, "4752580000000002")
    assert srv.stats.associations == 1 and srv.stats.rejected == 1
