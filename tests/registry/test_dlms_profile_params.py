"""DLMS identity and register parameters are checked when the inventory is read."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cgm import registry
from cgm.registry import InventoryError
from tests.registry.conftest import frontier, meter


def test_identity_and_rollover_params_load(write_yaml: Callable[..., Path]) -> None:
    params = {"identity": "ldn", "register_digits": 8, "rated_current_a": 5}
    inventory = registry.load(write_yaml(frontier("Frt1", meters=[meter("P", params=params)])))
    assert inventory.frontiers[0].meters[0].params["identity"] == "ldn"


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"identity": "barcode"}, "identity must be auto, serial or ldn"),
        ({"register_digits": "eight"}, "eight"),
    ],
)
def test_bad_dlms_params_are_refused_at_import(
    write_yaml: Callable[..., Path], params: dict, needle: str
) -> None:
    with pytest.raises(InventoryError) as exc:
        registry.load(write_yaml(frontier("Frt1", meters=[meter("P", params=params)])))
    assert needle in "\n".join(i.message for i in exc.value.issues)
