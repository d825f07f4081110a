"""Portal test helpers: inventory builders with unique codes, a connection per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest_asyncio
import yaml


def tag() -> str:
    return uuid.uuid4().hex[:8]


def unit(code: str | None = None, **over: Any) -> dict[str, Any]:
    u: dict[str, Any] = {
        "code": code or f"U{tag()}",
        "building": {
            "region": "Valparaíso",
            "province": "Valparaíso",
            "commune": "Viña del Mar",
            "street": f"Calle {tag()}",
            "number": "123",
        },
        "institution": "Ministerio de Salud",
        "service": "Servicio de Salud Viña del Mar",
        "name": "Hospital",
        "use_type": "hospital",
        "floors": "1,2",
        "surface_m2": 1250.5,
        "property_type": "own",
        "roll_numbers": ["123-45"],
        "construction_year": 1998,
        "staff_count": 40,
        "reports_pmg": True,
        "invoice": {"access": "yes"},
        "energy_sources": {"electricity": True, "natural_gas": False, "lpg": False},
    }
    u.update(over)
    return u


def client(number: str | None = None, meters: list[str] | None = None, **over: Any) -> dict:
    c: dict[str, Any] = {
        "company": "Chilquinta",
        "number": number or tag(),
        "tariff_type": "BT-1",
        "connected_power_kw": 30,
        "meters": [
            {"number": m, "smart": True, "shared": True, "invoice_access": True}
            for m in (meters if meters is not None else [f"M{tag()}"])
        ],
    }
    c.update(over)
    return c


def write(path: Path, units: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"units": units}, allow_unicode=True, sort_keys=False))
    return path


@pytest_asyncio.fixture(loop_scope="session")
async def conn(db_url: str) -> AsyncIterator[psycopg.AsyncConnection]:
    async with await psycopg.AsyncConnection.connect(db_url) as c:
        yield c
