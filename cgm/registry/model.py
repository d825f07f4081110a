"""The inventory model: a frontier and its meters, as an operator declares them.

Validation here refuses only *malformed* data (wrong types, unknown fields, impossible
values, an undeterminable point type). What is well-formed but breaks the Código de Medida
(a missing backup, a poor accuracy class) is not an error: see ``compliance``.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)

from cgm.registry import rules
from drivers.base import AccessLevel, Channel, Credentials, Endpoint

FRONTIER_CODE = r"^Frt[0-9]+$"
NETWORK_OPERATOR = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$"
ENV_PREFIX = "env:"

Kind = Literal["generation", "commercialisation", "distribution", "international_link"]
Role = Literal["principal", "backup"]
Protocol = Literal["dlms", "modbus", "mqtt"]

_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9._-]+)):(?P<port>\d+)$")


def parse_endpoint(value: Any) -> Endpoint:
    """``host:port`` or ``[ipv6]:port`` → Endpoint."""
    if isinstance(value, Endpoint):
        return value
    if not isinstance(value, str):
        raise ValueError("endpoint must be a 'host:port' string")
    m = _HOST_PORT.match(value.strip())
    if not m:
        raise ValueError("endpoint must be 'host:port' (IPv6 as '[addr]:port')")
    port = int(m["port"])
    if not 1 <= port <= 65535:
        raise ValueError("endpoint port must be between 1 and 65535")
    return Endpoint(m["v6"] or m["host"], port)


def parse_ratio(value: Any) -> float:
    """A transformer ratio as a number or as "primary/secondary" ("200/5" → 40)."""
    if isinstance(value, bool):
        raise ValueError("ratio must be a number or 'primary/secondary'")
    if isinstance(value, int | float):
        ratio = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        try:
            if "/" in text:
                num, den = text.split("/", 1)
                ratio = float(num) / float(den)
            else:
                ratio = float(text)
        except (ValueError, ZeroDivisionError):
            raise ValueError("ratio must be a number or 'primary/secondary' like '200/5'") from None
    else:
        raise ValueError("ratio must be a number or 'primary/secondary'")
    if not math.isfinite(ratio) or ratio <= 0:
        raise ValueError("ratio must be positive")
    return ratio


def _class(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError("accuracy class must be one of 0.2S, 0.2, 0.5S, 0.5, 1, 2, 3")
    return rules.normalize_class(value)


EndpointField = Annotated[Endpoint, BeforeValidator(parse_endpoint)]
Ratio = Annotated[float, BeforeValidator(parse_ratio)]
AccuracyClass = Annotated[str, BeforeValidator(_class)]


class _Strict(BaseModel):
    # forbid: a misspelt field is an error, never silently ignored.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=False)


class CredentialSpec(_Strict):
    """One access level's secret (art. 17) and optional protocol client identity.

    ``secret`` is the secret itself or ``env:VARNAME`` (recommended: the inventory file then
    holds no secret). It is kept as a SecretStr so it never shows in a repr or a log.
    """

    secret: SecretStr
    client: str | None = None
    _env: str | None = PrivateAttr(default=None)

    @field_validator("secret", mode="before")
    @classmethod
    def _string_only(cls, v: Any) -> Any:
        # A YAML number would be silently reformatted (0123 is octal 83): demand a string.
        if not isinstance(v, str | SecretStr):
            raise ValueError("secret must be a quoted string or 'env:VARNAME'")
        return v

    @field_validator("client", mode="before")
    @classmethod
    def _client_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _resolve_env(self) -> CredentialSpec:
        raw = self.secret.get_secret_value()
        if raw.startswith(ENV_PREFIX):
            name = raw[len(ENV_PREFIX) :].strip()
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError("secret 'env:' reference needs a variable name, e.g. env:FRT_L1")
            value = os.environ.get(name)
            if not value:
                raise ValueError(f"environment variable {name} (secret reference) is not set")
            self.secret = SecretStr(value)
            self._env = name
        elif not raw:
            raise ValueError("secret is empty")
        return self

    @property
    def from_env(self) -> bool:
        return self._env is not None


def _resolve_secret(value: SecretStr | None, what: str) -> tuple[SecretStr | None, str | None]:
    """(secret, env var name) for a secret given inline or as ``env:VARNAME``."""
    if value is None:
        return None, None
    raw = value.get_secret_value()
    if not raw.startswith(ENV_PREFIX):
        if not raw:
            raise ValueError(f"{what} is empty")
        return value, None
    name = raw[len(ENV_PREFIX) :].strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"{what} 'env:' reference needs a variable name, e.g. env:MQTT_PW")
    found = os.environ.get(name)
    if not found:
        raise ValueError(f"environment variable {name} ({what} reference) is not set")
    return SecretStr(found), name


class BrokerLoginSpec(_Strict):
    """The CGM's login to an MQTT meter's broker: an account (``username`` + ``password``)
    and/or a TLS client certificate (``client_key``: the PEM private key; the certificate
    file, which is public, is the meter's ``params.client_cert``). Secrets as in
    :class:`CredentialSpec`: inline or ``env:VARNAME``; stored encrypted."""

    username: str | None = None
    password: SecretStr | None = None
    client_key: SecretStr | None = None
    _env: list[str] = PrivateAttr(default_factory=list)

    @field_validator("password", "client_key", mode="before")
    @classmethod
    def _string_only(cls, v: Any) -> Any:
        if v is not None and not isinstance(v, str | SecretStr):
            raise ValueError("must be a quoted string or 'env:VARNAME'")
        return v

    @model_validator(mode="after")
    def _resolve_env(self) -> BrokerLoginSpec:
        if self.username is None and self.password is None and self.client_key is None:
            raise ValueError("broker login needs a username (and password) or a client_key")
        if self.password is not None and self.username is None:
            raise ValueError("a broker password needs its username")
        self.password, pw_env = _resolve_secret(self.password, "password")
        self.client_key, key_env = _resolve_secret(self.client_key, "client_key")
        self._env = [n for n in (pw_env, key_env) if n]
        return self

    @property
    def from_env(self) -> bool:
        inline = [s for s in (self.password, self.client_key) if s is not None]
        return len(self._env) == len(inline)

    def sealed(self) -> str:
        """The secret part as one string, for encryption at rest."""
        return json.dumps(
            {
                "password": self.password.get_secret_value() if self.password else None,
                "client_key": self.client_key.get_secret_value() if self.client_key else None,
            },
            sort_keys=True,
        )


class CredentialsSpec(_Strict):
    level1: CredentialSpec | None = None  # reads (art. 17 level 1)
    level2: CredentialSpec | None = None  # also sets clock/parameters (level 2)
    broker: BrokerLoginSpec | None = None  # MQTT: the CGM's login to the meter's broker

    def by_level(self) -> dict[AccessLevel, CredentialSpec]:
        found = {AccessLevel.READ: self.level1, AccessLevel.CONFIGURE: self.level2}
        return {level: spec for level, spec in found.items() if spec is not None}


class MeterSpec(_Strict):
    serial: str = Field(min_length=1)
    role: Role
    protocol: Protocol
    endpoint: EndpointField
    backup_endpoint: EndpointField | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    ct_ratio: Ratio = 1.0
    vt_ratio: Ratio = 1.0
    accuracy_active: AccuracyClass | None = None
    accuracy_reactive: AccuracyClass | None = None
    ct_accuracy: AccuracyClass | None = None
    vt_accuracy: AccuracyClass | None = None
    manufacturer: str | None = None
    model: str | None = None
    channels: list[Channel] = Field(default_factory=lambda: list(Channel), min_length=1)
    credentials: CredentialsSpec = Field(default_factory=CredentialsSpec)

    @field_validator("serial", mode="before")
    @classmethod
    def _serial_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("channels")
    @classmethod
    def _no_duplicate_channels(cls, v: list[Channel]) -> list[Channel]:
        if len(set(v)) != len(v):
            raise ValueError("channels are listed more than once")
        return sorted(v, key=list(Channel).index)

    @model_validator(mode="after")
    def _dlms_access(self) -> MeterSpec:
        """DLMS framing and authentication params, and secrets that fit each mechanism."""
        if self.protocol == "dlms":
            from drivers.dlms import DlmsParams
            from drivers.dlms.access import AccessParams, check_secret

            # Values of every known DLMS param (identity, register_*, …); unknown keys are
            # the loader's to report.
            known = DlmsParams.known_keys()
            DlmsParams.from_mapping({k: v for k, v in self.params.items() if k in known})
            access = AccessParams.from_mapping(self.params)
            for level, spec in self.credentials.by_level().items():
                try:
                    check_secret(access.mechanism(level), spec.secret.get_secret_value())
                except ValueError as exc:
                    raise ValueError(f"credentials.level{int(level)}: {exc}") from None
        return self

    def credentials_for_driver(self) -> dict[AccessLevel, Credentials]:
        return {
            level: Credentials(level, spec.secret.get_secret_value(), spec.client)
            for level, spec in self.credentials.by_level().items()
        }


class FrontierSpec(_Strict):
    code: str = Field(pattern=FRONTIER_CODE)
    name: str = Field(min_length=1)
    kind: Kind
    stn: bool = False
    voltage_level: int = Field(ge=1, le=4)
    installed_capacity_mva: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    monthly_energy_mwh: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    adjustment_factor: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    point_type: int | None = Field(default=None, ge=1, le=5)
    clock_target_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    # The frontier's network operator (OR): its level-1 market user sees this frontier
    # (art. 9.1.1.21; ``cgm user sync-market``).
    network_operator: str | None = Field(default=None, pattern=NETWORK_OPERATOR)
    # 'monthly': reported to the ASIC as one value a month (XM's ReadingCount 1, e.g. an
    # embedded frontier); 'daily': 24 hourly values each day.
    asic_period: Literal["daily", "monthly"] = "daily"
    # Validity of a calibration for ``cgm audit``; None: the Table 4 interval of the type.
    calibration_interval_years: float | None = Field(default=None, gt=0, le=50,
                                                     allow_inf_nan=False)  # fmt: skip
    attributes: dict[str, Any] = Field(default_factory=dict)
    meters: list[MeterSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> FrontierSpec:
        if self.point_type is None and self.table1_type is None:
            raise ValueError(
                "point type cannot be determined: give monthly_energy_mwh, "
                "installed_capacity_mva or point_type (Table 1)"
            )
        # Role and serial uniqueness are checked by the loader, which can name the line.
        return self

    @property
    def table1_type(self) -> int | None:
        """Type by Table 1 from the declared energy and capacity (None: neither given)."""
        return rules.table1_type(self.monthly_energy_mwh, self.installed_capacity_mva)

    @property
    def effective_point_type(self) -> int:
        """The stricter (lower) of the declared type and the one Table 1 computes (art.
        9.1.1.5): an understated declaration never loosens the clock limit, the backup
        requirement or the accuracy classes. A difference is a compliance finding."""
        found = [t for t in (self.point_type, self.table1_type) if t is not None]
        assert found  # guaranteed by _consistent
        return min(found)

    @property
    def clock_limit_s(self) -> float:
        return rules.clock_limit(self.effective_point_type, self.clock_target_s)

    def meter(self, role: Role) -> MeterSpec | None:
        return next((m for m in self.meters if m.role == role), None)


class InventoryFile(_Strict):
    """Top level of a YAML inventory: ``frontiers: [...]``."""

    frontiers: list[dict[str, Any]] = Field(default_factory=list)
