"""The Código de Medida's classification and accuracy tables, as data.

Sources (CREG 038/2014, compiled in the Resolución Única):
- Table 1: measurement point types 1–5 by monthly energy C [MWh-month] or installed
  capacity CI [MVA]; where the criteria disagree the stricter (lower) type applies.
- Table 2: minimum accuracy classes of meters (active, reactive) and of CTs and VTs per type.
- Art. 16, Table 3: maximum clock drift, 30 s for types 1–2 and 60 s for types 3–5.
- Art. 13 and 15(c): backup meter required for generation frontiers, frontiers connected to
  the STN, and point types 1 and 2.

Keeping the tables here, and nowhere else, means a CREG amendment is a one-file change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

POINT_TYPES = (1, 2, 3, 4, 5)

# Table 1: (type, lower bound inclusive) — a value belongs to the first row whose bound it
# reaches; below every bound it is type 5.
TABLE1_ENERGY_MWH: tuple[tuple[int, float], ...] = ((1, 15_000.0), (2, 500.0), (3, 50.0), (4, 5.0))
TABLE1_CAPACITY_MVA: tuple[tuple[int, float], ...] = ((1, 30.0), (2, 1.0), (3, 0.1), (4, 0.01))

# Art. 16, Table 3: maximum clock drift in seconds per point type.
TABLE3_CLOCK_DRIFT_S: dict[int, float] = {1: 30.0, 2: 30.0, 3: 60.0, 4: 60.0, 5: 60.0}


@dataclass(frozen=True)
class AccuracyRequirement:
    """Table 2 row: the least accurate class accepted for each element (None: no limit)."""

    active: str
    reactive: str
    ct: str | None
    vt: str | None


# Table 2. Type 5 accepts active class 1 or 2 and reactive 2 or 3: the limit is the looser.
TABLE2_ACCURACY: dict[int, AccuracyRequirement] = {
    1: AccuracyRequirement(active="0.2S", reactive="2", ct="0.2S", vt="0.2"),
    2: AccuracyRequirement(active="0.5S", reactive="2", ct="0.5S", vt="0.5"),
    3: AccuracyRequirement(active="0.5S", reactive="2", ct="0.5S", vt="0.5"),
    4: AccuracyRequirement(active="1", reactive="2", ct="0.5", vt="0.5"),
    5: AccuracyRequirement(active="2", reactive="3", ct=None, vt=None),
}

# Backup meter (art. 13, 15c): required for these point types regardless of kind.
BACKUP_REQUIRED_TYPES = frozenset({1, 2})

_CLASS = re.compile(r"^(0\.2|0\.5|1|2|3)(S)?$")


def normalize_class(value: str | float | int) -> str:
    """Canonical spelling of an accuracy class ("0.2s" → "0.2S", 1.0 → "1").

    Raises ValueError for anything that is not an IEC class used by the Código.
    """
    text = f"{value:g}" if isinstance(value, int | float) else str(value).strip()
    text = text.upper().replace(",", ".")
    if text.endswith(".0S"):
        text = text[:-3] + "S"
    elif text.endswith(".0"):
        text = text[:-2]
    m = _CLASS.match(text)
    if not m:
        raise ValueError("accuracy class must be one of 0.2S, 0.2, 0.5S, 0.5, 1, 2, 3")
    return text


def class_rank(cls: str) -> float:
    """Order of accuracy classes: smaller is more accurate; "S" ranks at its number."""
    return float(normalize_class(cls).rstrip("S"))


def meets(actual: str, required: str) -> bool:
    """Whether ``actual`` is at least as accurate as ``required``.

    "S" variants rank at their number (0.2 and 0.2S are equal) — the Código's ordering
    for this check, see module docstring.
    """
    return class_rank(actual) <= class_rank(required)


def _by_table(value: float, rows: tuple[tuple[int, float], ...]) -> int:
    for point_type, lower in rows:
        if value >= lower:
            return point_type
    return 5


def type_by_energy(monthly_energy_mwh: float) -> int:
    """Table 1 by monthly energy: 1 ≥ 15,000; 2 ≥ 500; 3 ≥ 50; 4 ≥ 5; else 5 (MWh-month)."""
    return _by_table(monthly_energy_mwh, TABLE1_ENERGY_MWH)


def type_by_capacity(installed_capacity_mva: float) -> int:
    """Table 1 by installed capacity: 1 ≥ 30; 2 ≥ 1; 3 ≥ 0.1; 4 ≥ 0.01; else 5 (MVA)."""
    return _by_table(installed_capacity_mva, TABLE1_CAPACITY_MVA)


def table1_type(
    monthly_energy_mwh: float | None, installed_capacity_mva: float | None
) -> int | None:
    """Table 1 type from whichever criteria are given; the stricter (lower) one wins.

    None when neither is given (the caller then needs an explicit type).
    """
    found = []
    if monthly_energy_mwh is not None:
        found.append(type_by_energy(monthly_energy_mwh))
    if installed_capacity_mva is not None:
        found.append(type_by_capacity(installed_capacity_mva))
    return min(found) if found else None


def clock_limit(point_type: int, target_s: float | None = None) -> float:
    """Maximum clock drift (art. 16, Table 3); a tighter configured target wins."""
    limit = TABLE3_CLOCK_DRIFT_S[point_type]
    return min(limit, target_s) if target_s is not None else limit


def backup_required(point_type: int, kind: str, stn: bool) -> bool:
    """Art. 13/15(c): generation, STN-connected, and type 1–2 frontiers need a backup."""
    return kind == "generation" or stn or point_type in BACKUP_REQUIRED_TYPES
