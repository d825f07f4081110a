"""The CGM's own clock against a real (local) SNTP server over UDP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cgm.collection.timeref import ReferenceConfig, check_reference, host_ntp_state
from tests.fixtures.sntp import SntpServer


@pytest.fixture
def sntp() -> Iterator[SntpServer]:
    server = SntpServer()
    yield server
    server.close()


def test_host_within_margin_of_official_time_is_a_reference(sntp: SntpServer) -> None:
    sntp.offset = 0.2
    check = check_reference(ReferenceConfig(servers=(sntp.address,), max_offset_s=0.5))
    assert check.ok, check.detail
    assert check.server == sntp.address and 0.15 < check.offset_s < 0.25
    assert sntp.requests == 1


@pytest.mark.parametrize("offset", [3.0, -3.0])
def test_host_off_official_time_is_refused(sntp: SntpServer, offset: float) -> None:
    sntp.offset = offset
    check = check_reference(ReferenceConfig(servers=(sntp.address,), max_offset_s=0.5))
    assert not check.ok
    assert abs(check.offset_s - offset) < 0.1 and "beyond 0.5 s" in check.detail


def test_first_server_silent_second_answers(sntp: SntpServer) -> None:
    silent = SntpServer(silent=True)
    try:
        cfg = ReferenceConfig(servers=(silent.address, sntp.address), timeout_s=0.3)
        check = check_reference(cfg)
    finally:
        silent.close()
    assert check.ok and check.server == sntp.address


def test_no_server_answers_reference_not_established() -> None:
    silent = SntpServer(silent=True)
    try:
        check = check_reference(ReferenceConfig(servers=(silent.address,), timeout_s=0.3))
    finally:
        silent.close()
    assert not check.ok and "not established" in check.detail
    assert silent.address in check.detail


def test_no_server_configured_relies_on_host_state() -> None:
    synced, _ = host_ntp_state()
    check = check_reference(ReferenceConfig(servers=()))
    # This host (a container without systemd or chrony) cannot say: refused. A host that
    # says it is synchronised is accepted.
    assert check.ok is bool(synced)
    if synced is None:
        assert "not established" in check.detail
