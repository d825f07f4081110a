"""Configuration: environment variables (``CGM_*``) over an optional TOML file over defaults.

The TOML file is ``$CGM_CONFIG`` or ``./cgm.toml`` when present. Everything that is a
regulatory choice (retention, clock targets) is validated here so that a bad setting stops
the service at start rather than misbehaving later.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

MIN_RETENTION_YEARS = 2  # art. 18: the CGM keeps readings at least 2 years


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CGM_", extra="forbid")

    # Storage. No URL: an embedded PostgreSQL is started under ``data_dir``.
    database_url: str | None = None
    data_dir: Path = Path("data")
    pool_size: int = Field(default=8, ge=1)
    # None keeps readings forever; a number drops older chunks (TimescaleDB) and is refused
    # below the 2-year minimum.
    retention_years: float | None = None
    compress_after_days: int = Field(default=30, ge=1)  # TimescaleDB only

    # MQTT broker for MQTT meters. No URL: an in-process MQTT 5 broker listens on
    # ``mqtt_listen`` (meters then publish to this address).
    mqtt_url: str | None = None
    mqtt_listen: str = "127.0.0.1:1883"

    # Key that encrypts meter credentials at rest (Fernet, urlsafe base64 32 bytes).
    # No key: one is generated once into ``data_dir/secret.key`` (mode 0600).
    secret_key: str | None = Field(default=None, repr=False)

    cgm_code: str = "CGM0000"  # the CGM's code before the ASIC

    # HTTP: Prometheus metrics and the API (0 disables).
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=0, le=65535)

    @field_validator("retention_years")
    @classmethod
    def _retention_at_least_two_years(cls, v: float | None) -> float | None:
        if v is not None and v < MIN_RETENTION_YEARS:
            raise ValueError(
                f"retention_years={v} is below the Código de Medida's minimum of "
                f"{MIN_RETENTION_YEARS} years (art. 18)"
            )
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = Path(os.environ.get("CGM_CONFIG", "cgm.toml"))
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
        return tuple(sources)


@lru_cache
def get_settings(**overrides: Any) -> Settings:
    return Settings(**overrides)
