"""docker-compose.yml (no Docker engine here: read and parse-checked): TimescaleDB pinned to
the release line the tests run on, the service on its least-privileged role, the
administrator only for migrations, and the README naming the same image."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from cgm.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_compose_pins_timescaledb_and_uses_the_service_role() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    image = services["timescaledb"]["image"]
    assert re.fullmatch(r"timescale/timescaledb:2\.28\.\d+-pg15", image), image
    service = Settings().db_service_role
    assert services["cgm"]["environment"]["CGM_DATABASE_URL"].startswith(
        f"postgresql://{service}:"
    )
    assert services["cgm-migrate"]["environment"]["CGM_DATABASE_URL"].startswith(
        "postgresql://cgm:"
    )
    init = services["timescaledb"]["volumes"][1].split(":")[0]
    script = (ROOT / init).read_text()
    assert f"CREATE ROLE {service} LOGIN" in script
    assert image in (ROOT / "README.md").read_text()
