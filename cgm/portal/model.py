"""The portal inventory file's shape (pydantic): what a unit declares about itself.

Regions are Chile's 16 (the inventory follows Gestiona Energía); a roll number (rol de
avalúo) is ``manzana-predio`` digits. Only electricity, natural gas and LPG are energy
sources, and only they can have meters.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

REGIONS = (
    "Arica y Parinacota", "Tarapacá", "Antofagasta", "Atacama", "Coquimbo", "Valparaíso",
    "Metropolitana de Santiago", "O'Higgins", "Maule", "Ñuble", "Biobío", "La Araucanía",
    "Los Ríos", "Los Lagos", "Aysén", "Magallanes",
)  # fmt: skip
SOURCES = ("electricity", "natural_gas", "lpg")
ROLL = re.compile(r"^\d{1,5}-\d{1,5}$")
FLOORS = re.compile(r"^-?\d{1,3}(,-?\d{1,3})*$")

Text = Annotated[str, Field(min_length=1, max_length=500)]
Source = Literal["electricity", "natural_gas", "lpg"]


def meter_source(v: object) -> object:
    """A clear refusal for a meter of any other source than the three."""
    if isinstance(v, str) and v.strip() not in SOURCES:
        raise ValueError(
            f"energy source {v.strip()!r} cannot have meters: only electricity, natural_gas "
            "and lpg can"
        )
    return v


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class BuildingSpec(_Spec):
    region: str
    province: Text
    commune: Text
    street: Text
    number: Text
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)

    @field_validator("region")
    @classmethod
    def _region(cls, v: str) -> str:
        for r in REGIONS:
            if v.casefold() == r.casefold():
                return r
        raise ValueError(f"unknown region {v!r} (one of: {', '.join(REGIONS)})")

    def key(self) -> tuple[str, ...]:
        return tuple(s.casefold() for s in (self.region, self.commune, self.street, self.number))


class CgmLink(_Spec):
    frontier: Text
    channel: Literal["active_import", "active_export", "reactive_import", "reactive_export"] = (
        "active_import"
    )


class MeterSpec(_Spec):
    number: Text
    source: Source = "electricity"
    smart: bool
    shared: bool
    invoice_access: bool
    cgm: CgmLink | None = None

    @field_validator("source", mode="before")
    @classmethod
    def _source(cls, v: object) -> object:
        return meter_source(v)


class ClientNumberSpec(_Spec):
    company: Text
    number: Text
    tariff_type: Text
    connected_power_kw: float | None = Field(default=None, ge=0)
    meters: list[MeterSpec] = []


class AssociationSpec(_Spec):
    """Reading another unit's meters: same company and client number, some of its meters."""

    company: Text
    number: Text
    meters: list[Text] = Field(min_length=1)


class InvoiceAccess(_Spec):
    access: Literal["yes", "other_service", "other_organisation"]
    holder: str | None = None  # institution and service, or the organisation

    @model_validator(mode="after")
    def _holder(self) -> InvoiceAccess:
        if self.access == "yes" and self.holder:
            raise ValueError("holder is only for access other_service/other_organisation")
        if self.access != "yes" and not self.holder:
            raise ValueError(f"access {self.access} needs the holder (who has the invoices)")
        return self


class UnitSpec(_Spec):
    code: Text
    building: BuildingSpec
    institution: Text
    service: Text
    name: Text
    use_type: Text
    floors: str
    surface_m2: float = Field(gt=0)
    property_type: Text
    roll_numbers: list[str] = []
    roll_justification: str | None = None
    construction_year: int | None = Field(default=None, ge=1500, le=2200)
    staff_count: int = Field(ge=0)
    reports_pmg: bool
    invoice: InvoiceAccess
    non_reporting_justification: str | None = None
    energy_sources: dict[str, bool]
    client_numbers: list[ClientNumberSpec] = []
    associate: list[AssociationSpec] = []

    @field_validator("floors")
    @classmethod
    def _floors(cls, v: str) -> str:
        v = v.replace(" ", "")
        if not FLOORS.match(v):
            raise ValueError("floors are numbers separated by commas, e.g. 1,2")
        return v

    @field_validator("roll_numbers")
    @classmethod
    def _rolls(cls, v: list[str]) -> list[str]:
        for r in v:
            if not ROLL.match(r.strip()):
                raise ValueError(
                    f"malformed roll number {r!r} (expected digits-digits, e.g. 123-45)"
                )
        return [r.strip() for r in v]

    @field_validator("energy_sources")
    @classmethod
    def _sources(cls, v: dict[str, bool]) -> dict[str, bool]:
        extra = [k for k in v if k not in SOURCES]
        if extra:
            raise ValueError(
                f"energy source {extra[0]!r} is not one of electricity, natural_gas, lpg "
                "(only those three can have meters)"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> UnitSpec:
        if not self.roll_numbers and not (self.roll_justification or "").strip():
            raise ValueError("give roll_numbers, or roll_justification when there are none")
        for cn in self.client_numbers:
            for m in cn.meters:
                if not self.energy_sources.get(m.source, False):
                    raise ValueError(
                        f"meter {m.number} is {m.source}, which is not switched on for the unit"
                    )
        return self
