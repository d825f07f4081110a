"""docker-compose.yml and deploy/ (no Docker engine here: read and parse-checked): TimescaleDB
pinned to the release line the tests run on, the service on its least-privileged role, the
administrator only for migrations, the README naming the same image, every CGM_* variable a
setting, and the monitoring configs consistent with the metrics the service exports."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

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


def _cgm_services(compose: dict) -> dict[str, dict[str, str]]:
    """The environment of each service that runs the cgm image (built from the Dockerfile)."""
    return {n: s["environment"] for n, s in compose["services"].items() if "build" in s}


def _interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` as its default; a required ``${VAR}`` as a placeholder."""
    value = re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)
    return re.sub(r"\$\{[A-Z0-9_]+(:\?[^}]*)?\}", "x", value)


def test_compose_cgm_variables_are_settings_the_service_knows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A misspelt CGM_* variable would be ignored silently (environment variables are not
    checked like the TOML file): every one given to the cgm containers names a setting, and
    with compose's defaults they parse."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    known = {f"CGM_{name.upper()}" for name in Settings.model_fields} | {"CGM_CONFIG"}
    dockerfile_env = re.findall(r"\b(CGM_[A-Z0-9_]+)=(\S+)", (ROOT / "Dockerfile").read_text())
    assert dockerfile_env, "the Dockerfile sets CGM_DATA_DIR and CGM_API_HOST"
    services = _cgm_services(compose)
    assert set(services) == {"cgm", "cgm-migrate"}
    for name, env in services.items():
        env = {**dict(dockerfile_env), **env}
        unknown = sorted(k for k in env if k.startswith("CGM_") and k not in known)
        assert not unknown, f"{name}: {unknown} are no cgm settings (cgm/config.py)"
        for key in [k for k in list(os.environ) if k.startswith("CGM_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, _interpolate(str(value)))
        settings = Settings()
        assert settings.api_host == "0.0.0.0"  # Prometheus scrapes it from another container
        assert settings.database_url and settings.mqtt_url == "mqtt://mosquitto:1883"
        assert settings.clock_reference_servers == ["co.pool.ntp.org"]
        assert settings.collect_accountable_user is None  # empty: no automatic clock sets


def test_env_example_names_every_variable_compose_requires() -> None:
    """``cp deploy/env.example .env`` leaves nothing compose asks for unnamed."""
    text = (ROOT / "docker-compose.yml").read_text()
    asked = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    example = {
        line.split("=", 1)[0]
        for line in (ROOT / "deploy" / "env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert asked <= example, sorted(asked - example)


def test_deploy_configs_parse_and_the_dashboard_plots_metrics_the_service_exports() -> None:
    import cgm.metrics  # noqa: F401 - registers the service's metrics

    deploy = ROOT / "deploy"
    scrape = yaml.safe_load((deploy / "prometheus" / "prometheus.yml").read_text())
    targets = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert "9464:9464" in compose["services"]["cgm"]["ports"] and targets == ["cgm:9464"]
    sources = yaml.safe_load(
        (deploy / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    providers = yaml.safe_load(
        (deploy / "grafana" / "provisioning" / "dashboards" / "cgm.yml").read_text()
    )["providers"]
    assert providers[0]["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboard = json.loads((deploy / "grafana" / "dashboards" / "cgm.json").read_text())
    uids = {s["uid"] for s in sources}
    exported: set[str] = set()
    for metric in REGISTRY.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        exported |= {metric.name + s for s in suffixes.get(metric.type, [""])}
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] in uids, panel["title"]
        for target in panel.get("targets", []):
            used = set(re.findall(r"\bcgm_[a-z0-9_]+", target["expr"]))
            assert used and used <= exported, (panel["title"], sorted(used - exported))
