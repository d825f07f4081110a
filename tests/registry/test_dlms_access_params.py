"""DLMS authentication and framing parameters are checked when the inventory is read."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cgm import registry
from cgm.registry import InventoryError
from tests.registry.conftest import frontier, meter

GMAC = "ek=000102030405060708090a0b0c0d0e0f;ak=d0d1d2d3d4d5d6d7d8d9dadbdcdddedf"


def _creds(level2: str) -> dict[str, dict[str, str]]:
    return {"level1": {"secret": "reader-pass"}, "level2": {"secret": level2}}


def test_hls_gmac_hdlc_meter_loads(write_yaml: Callable[..., Path]) -> None:
    params = {
        "level2_auth": "hls-gmac",
        "framing": "hdlc",
        "hdlc_server_lower": 17,
        "hdlc_address_size": 2,
    }
    fr = frontier("Frt1", meters=[meter("P", params=params, credentials=_creds(GMAC))])
    inventory = registry.load(write_yaml(fr))
    (m,) = inventory.frontiers[0].meters
    assert m.params["level2_auth"] == "hls-gmac"


@pytest.mark.parametrize(
    ("params", "secret", "needle"),
    [
        ({"level2_auth": "hls-gmac"}, "just-a-password", "ek="),
        ({"level2_auth": "hls"}, "a-key-longer-than-sixteen-bytes", "16 bytes"),
        ({"level2_auth": "kerberos"}, "x", "level2_auth"),
        ({"framing": "hdlc", "hdlc_address_size": 4}, "x", "lower address"),
    ],
)
def test_bad_dlms_access_is_an_error_that_never_echoes_the_secret(
    write_yaml: Callable[..., Path], params: dict, secret: str, needle: str
) -> None:
    fr = frontier("Frt1", meters=[meter("P", params=params, credentials=_creds(secret))])
    with pytest.raises(InventoryError) as exc:
        registry.load(write_yaml(fr))
    text = "\n".join(f"{i.where}: {i.message}" for i in exc.value.issues)
    assert needle in text
    assert secret not in text or secret == "x"
