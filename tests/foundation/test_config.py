"""Configuration: environment over TOML, and the 2-year retention floor."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from cgm.config import Settings


def test_retention_below_two_years_is_refused() -> None:
    with pytest.raises(ValidationError, match="minimum of 2 years"):
        Settings(retention_years=1.5)


def test_retention_default_keeps_everything() -> None:
    assert Settings().retention_years is None
    assert Settings(retention_years=2).retention_years == 2


def test_environment_overrides_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "cgm.toml"
    toml.write_text('database_url = "postgresql://from-toml/db"\ncgm_code = "CGM0042"\n')
    monkeypatch.setenv("CGM_CONFIG", str(toml))
    monkeypatch.setenv("CGM_DATABASE_URL", "postgresql://from-env/db")
    s = Settings()
    assert s.database_url == "postgresql://from-env/db"
    assert s.cgm_code == "CGM0042"


def test_unknown_toml_key_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "cgm.toml"
    toml.write_text('databse_url = "typo"\n')
    monkeypatch.setenv("CGM_CONFIG", str(toml))
    with pytest.raises(ValidationError, match="databse_url"):
        Settings()


def test_vee_settings_become_a_vee_config_and_typos_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import timedelta

    from cgm.vee.config import vee_config

    toml = tmp_path / "cgm.toml"
    toml.write_text('[vee]\ninterpolate_max_hours = 3\nprolonged_estimation = "P3D"\n')
    monkeypatch.setenv("CGM_CONFIG", str(toml))
    config = vee_config(Settings().vee)
    assert config.interpolate_max_hours == 3
    assert config.prolonged_estimation == timedelta(days=3)
    with pytest.raises(ValueError, match="interpolate_max_hour"):
        vee_config({"interpolate_max_hour": 3})
