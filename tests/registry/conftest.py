"""Registry test helpers: unique frontier codes, inventory builders, a key, a connection."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from cryptography.fernet import Fernet

from cgm.security import SecretBox


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(Fernet.generate_key())


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(db_url) as c:
        yield c


def new_code() -> str:
    return f"Frt{random.randrange(10**8, 10**9)}"


def meter(serial: str, role: str = "principal", **over: Any) -> dict[str, Any]:
    m: dict[str, Any] = {
        "serial": serial,
        "role": role,
        "protocol": "dlms",
        "endpoint": "10.0.0.1:4059",
        "ct_ratio": "200/5",
        "vt_ratio": "13200/120",
        "accuracy_active": "0.2S",
        "accuracy_reactive": "2",
        "credentials": {"level1": {"secret": f"r-{serial}"}, "level2": {"secret": f"w-{serial}"}},
    }
    m.update(over)
    return {k: v for k, v in m.items() if v is not None}


def frontier(code: str, meters: list[dict[str, Any]] | None = None, **over: Any) -> dict:
    """A compliant type-1 distribution frontier with principal and backup by default."""
    f: dict[str, Any] = {
        "code": code,
        "name": f"Frontier {code}",
        "kind": "distribution",
        "voltage_level": 3,
        "monthly_energy_mwh": 20000,
        "meters": meters
        if meters is not None
        else [meter(f"{code}-P"), meter(f"{code}-B", "backup")],
    }
    f.update(over)
    return {k: v for k, v in f.items() if v is not None}


@pytest.fixture
def write_yaml(tmp_path: Path) -> Callable[..., Path]:
    def write(*frontiers: dict[str, Any], name: str = "inventory.yaml") -> Path:
        p = tmp_path / name
        p.write_text(yaml.safe_dump({"frontiers": list(frontiers)}, sort_keys=False))
        return p

    return write
