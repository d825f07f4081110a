"""Configuration: environment variables (``CGM_*``) over an optional TOML file over defaults.

The TOML file is ``$CGM_CONFIG`` or ``./cgm.toml`` when present. Everything that is a
regulatory choice (retention, clock targets) is validated here so that a bad setting stops
the service at start rather than misbehaving later.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

MIN_RETENTION_YEARS = 2  # art. 18: the CGM keeps readings at least 2 years


class PortTaken(RuntimeError):
    """A port the settings name is in use; the message says which setting to change."""


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
    # Roles created by `cgm db upgrade` (cluster-wide): the owner of every cgm object, and
    # the least-privileged role the service connects as (cgm.migrate.apply_privileges).
    db_owner_role: str = Field(default="cgm_owner", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    db_service_role: str = Field(default="cgm_service", pattern=r"^[a-z_][a-z0-9_]{0,62}$")

    # MQTT broker for MQTT meters. No URL: an in-process MQTT 5 broker listens on
    # ``mqtt_listen`` (meters then publish to this address).
    mqtt_url: str | None = None
    mqtt_listen: str = "127.0.0.1:1883"
    # The pushed-entries subscription is a persistent session, so the broker queues pushes
    # while cgm is down: its client id must stay the same across restarts (None: derived
    # from the host name and the data directory; set it where those change, e.g. a
    # container), and the broker keeps the session this long after cgm goes away.
    mqtt_client_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{1,40}$")
    mqtt_session_expiry_s: int = Field(default=3 * 86400, ge=0)

    # Key that encrypts meter credentials at rest (Fernet, urlsafe base64 32 bytes).
    # No key: one is generated once into ``data_dir/secret.key`` (mode 0600).
    secret_key: str | None = Field(default=None, repr=False)

    cgm_code: str = "CGM0000"  # the CGM's code before the ASIC

    # Validation and estimation knobs: the fields of cgm.vee.config.VeeConfig, as a [vee]
    # table in the TOML file (or CGM_VEE as JSON). Checked at start; unknown keys refused.
    vee: dict[str, Any] = Field(default_factory=dict)
    # CPU priority of the VEE process and of its database backends where they run on this
    # host (cgm.vee.priority): "low" (nice +10), "idle" (Linux SCHED_IDLE: only CPU the
    # service leaves) or "normal"; and how many of the host's CPUs they keep off, for the
    # API and the collector alone (at least one CPU is always left to VEE; 0: none kept).
    vee_priority: Literal["idle", "low", "normal"] = "low"
    vee_reserve_cpus: int = Field(default=1, ge=0)

    # Collection. A collector whose heartbeat is older than this is taken for dead and its
    # open claims are read by the others. Wrong passwords: at most this many refused
    # authentications per meter and access level in 24 h (meters commonly lock an access
    # level after 3 to 5 wrong passwords); a new secret in the registry starts afresh.
    collect_stale_after_s: float = Field(default=90.0, gt=0)
    collect_max_wrong_passwords_per_day: int = Field(default=3, ge=1)
    # Clock synchronisation (art. 16). The level-2 user accountable for the collector's
    # automatic clock sets (an active level-2 user of `cgm user`); unset, no clock is set
    # and a clock past its target raises an alarm instead.
    collect_accountable_user: str | None = None
    # Correct past this fraction of the limit, and only count a set whose re-read is inside.
    clock_target_fraction: float = Field(default=1 / 3, gt=0, le=1)
    # Official time: NTP servers ("host" or "host:port") the host is checked against before
    # any meter is set, and the largest host offset accepted. Set these to the INM's
    # (Colombia's legal time) or your own stratum-1/2 servers.
    clock_reference_servers: list[str] = Field(default_factory=lambda: ["co.pool.ntp.org"])
    clock_reference_max_offset_s: float = Field(default=0.5, gt=0)
    clock_reference_timeout_s: float = Field(default=2.0, gt=0)

    # HTTP: Prometheus metrics and the API (0 disables).
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=0, le=65535)
    api_max_body_bytes: int = Field(default=64 * 1024, ge=1024)  # larger bodies: 413

    # --- Consumption portal: where validated daily consumption is pushed (cgm.portal) ---
    # No URL: nothing is pushed (``cgm portal push`` says so).
    portal_push_url: str | None = None
    portal_push_token: SecretStr | None = Field(default=None, repr=False)  # Bearer, optional
    portal_push_attempts: int = Field(default=5, ge=1, le=20)
    portal_push_timeout_s: float = Field(default=10.0, gt=0)
    # `cgm run` pushes automatically when a URL is set: every day at this local (Colombian)
    # time, the last `portal_push_days` days (yesterday included), so a day corrected after
    # its first push goes again as a new version; unchanged days are skipped. A positive
    # interval also runs the same job every that many seconds (`--simulate` uses 60).
    portal_push_time: str = Field(default="07:00", pattern=r"^([01]?\d|2[0-3]):[0-5]\d$")
    portal_push_days: int = Field(default=7, ge=1, le=62)
    portal_push_interval_s: float = Field(default=0.0, ge=0)

    # --- ASIC: automatic daily report of readings (cgm.reporting) ------------------------
    # Every deadline and window below is configuration, not a constant; each has a note of
    # its source. Defaults marked "to confirm" are operating choices awaiting the exact
    # figure from XM's current procedure; set them from it.
    # No base URL: the daily job is not scheduled (``cgm report asic --dry-run`` still builds).
    asic_base_url: str | None = None
    asic_client_id: str | None = None
    # Token client secret: from the environment (CGM_ASIC_CLIENT_SECRET); never logged.
    asic_client_secret: SecretStr | None = Field(default=None, repr=False)
    # Local time (Colombia) at which the daily job reports day D−1. Source: art. 37
    # (readings of day D are reported to the ASIC on D+1, automatically); hour: to confirm.
    asic_report_time: str = "06:00"
    # Deadline for day D's readings: ``asic_deadline_days`` days after D at
    # ``asic_deadline_time`` local. Source: art. 37 / Anexo 8 and XM's reading-report
    # procedure ("reported on D+1"); the hour is to confirm.
    asic_deadline_days: int = Field(default=1, ge=1)
    asic_deadline_time: str = "08:00"
    # A day whose settled series changes after it was sent is resent as a correction while
    # it is at most this many days old. Source: XM's correction (ajustes) window for
    # readings; the default is an operating choice, to confirm.
    asic_correction_window_days: int = Field(default=30, ge=0)
    # Frontiers reported monthly (registry ``asic_period: monthly``, XM's ReadingCount 1):
    # the monthly job sends month M on this day of month M+1 at ``asic_report_time``. XM's
    # public note on monthly reporting (CREG 038, 2016) gives the message, not the date:
    # the default (the 2nd, so the last day of M has been settled on the 1st) is an
    # operating choice, to confirm against XM's procedure.
    asic_monthly_report_day: int = Field(default=2, ge=1, le=28)
    # Zip limits of XM's reading service, as public clients use it (DESIGN.md).
    asic_max_documents_per_zip: int = Field(default=5, ge=1)
    asic_max_zip_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    # The message sent: "xm_xml" (XM's published ArrayOfReadingReportItem, many frontiers per
    # request) or "json_zip" (the earlier LecturaDiaria JSON documents in zips; no public
    # source, kept only for a CGM whose agreement with XM uses it).
    asic_format: Literal["xm_xml", "json_zip"] = "xm_xml"
    asic_max_items_per_message: int = Field(default=5000, ge=1)
    asic_timeout_s: float = Field(default=30.0, gt=0)
    asic_poll_interval_s: float = Field(default=120.0, gt=0)
    asic_retry_attempts: int = Field(default=4, ge=1)

    @field_validator("database_url")
    @classmethod
    def _database_url_parses(cls, v: str | None) -> str | None:
        # Checked here so a typo is one clear line at start, not a driver traceback later;
        # the message never repeats the URL (it may hold a password).
        if v:
            from psycopg.conninfo import conninfo_to_dict

            try:
                conninfo_to_dict(v)
            except Exception:
                raise ValueError(
                    "not a PostgreSQL URL or connection string "
                    "(postgresql://user:password@host:port/database)"
                ) from None
        return v

    @field_validator("collect_accountable_user")
    @classmethod
    def _blank_is_none(cls, v: str | None) -> str | None:
        return v.strip() or None if v is not None else None

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
