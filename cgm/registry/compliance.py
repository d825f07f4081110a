"""What a well-formed frontier may still violate in the Código de Medida.

These findings are *violations*, not errors: the import stores the frontier and records
them in ``frontier_violation`` so an operator can register a non-compliant frontier, see
what is wrong with it (``cgm registry list``), and fix it. Errors (malformed data) are the
loader's business and refuse the whole import.

Checks use the frontier's governing point type: the stricter of the declared one and the
one Table 1 computes. A declared type that differs from Table 1 is itself a finding:
``point_type_understated`` when it is less strict (Table 1's governs), ``point_type_differs``
when it is stricter (the declared one governs).
"""

from __future__ import annotations

from dataclasses import dataclass

from cgm.registry import rules
from cgm.registry.model import FrontierSpec, MeterSpec

ART_TABLE1 = "Table 1"
ART_TABLE2 = "Table 2"
ART_BACKUP = "art. 13, 15(c)"
ART_ACCESS = "art. 17"

_RATIO_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Finding:
    """One violation; ``subject`` is the meter serial, or '' for the frontier itself."""

    rule: str
    article: str
    message: str
    subject: str = ""


def _accuracy(meter: MeterSpec, point_type: int) -> list[Finding]:
    req = rules.TABLE2_ACCURACY[point_type]
    out: list[Finding] = []
    checks = [
        ("accuracy_active", meter.accuracy_active, req.active, "meter active energy", True),
        ("accuracy_reactive", meter.accuracy_reactive, req.reactive, "meter reactive energy", True),
        ("ct_accuracy", meter.ct_accuracy, req.ct, "current transformer", False),
        ("vt_accuracy", meter.vt_accuracy, req.vt, "voltage transformer", False),
    ]
    for field, actual, required, what, mandatory in checks:
        if required is None:
            continue
        if actual is None:
            if mandatory:
                out.append(
                    Finding(
                        f"{field}_undeclared",
                        ART_TABLE2,
                        f"{what} accuracy class not declared; type {point_type} requires "
                        f"{required} or better",
                        meter.serial,
                    )
                )
            continue
        if not rules.meets(actual, required):
            out.append(
                Finding(
                    f"{field}_below",
                    ART_TABLE2,
                    f"{what} class {actual} is less accurate than {required} required "
                    f"for point type {point_type}",
                    meter.serial,
                )
            )
    return out


def _access(meter: MeterSpec) -> list[Finding]:
    """Art. 17: two access levels on every meter, each with its own secret. A meter without
    a level-1 secret would be read with the level-2 one (never done: it is not read)."""
    out: list[Finding] = []
    levels = meter.credentials.by_level()
    for level in (1, 2):
        if not any(int(lv) == level for lv in levels):
            use = "reading" if level == 1 else "clock and parameter setting"
            out.append(
                Finding(
                    f"level{level}_secret_missing",
                    ART_ACCESS,
                    f"no level-{level} secret registered ({use} access)",
                    meter.serial,
                )
            )
    l1, l2 = meter.credentials.level1, meter.credentials.level2
    if l1 is not None and l2 is not None:
        if l1.secret.get_secret_value() == l2.secret.get_secret_value():
            out.append(
                Finding(
                    "secrets_not_distinct",
                    ART_ACCESS,
                    "the level-1 and level-2 secrets are the same: reading access would also "
                    "set the clock and parameters",
                    meter.serial,
                )
            )
    return out


def _mismatch(principal: MeterSpec, backup: MeterSpec) -> list[Finding]:
    """Art. 13: the backup has the same configuration as the principal."""
    out: list[Finding] = []

    def differs(rule: str, what: str, p: object, b: object) -> None:
        out.append(
            Finding(
                f"backup_mismatch_{rule}",
                ART_BACKUP,
                f"backup {what} {b} differs from the principal's {p}",
                backup.serial,
            )
        )

    for rule, what in (("ct_ratio", "CT ratio"), ("vt_ratio", "VT ratio")):
        p, b = getattr(principal, rule), getattr(backup, rule)
        if abs(p - b) > _RATIO_TOLERANCE * max(p, b):
            differs(rule, what, f"{p:g}", f"{b:g}")
    for rule, what in (
        ("accuracy_active", "active accuracy class"),
        ("accuracy_reactive", "reactive accuracy class"),
    ):
        p, b = getattr(principal, rule), getattr(backup, rule)
        if p != b:
            differs(rule, what, p or "(undeclared)", b or "(undeclared)")
    if principal.channels != backup.channels:
        differs(
            "channels",
            "channels",
            ",".join(c.value for c in principal.channels),
            ",".join(c.value for c in backup.channels),
        )
    return out


def check(frontier: FrontierSpec) -> list[Finding]:
    """All violations of one frontier, in a stable order."""
    found: list[Finding] = []
    point_type = frontier.effective_point_type
    table1 = frontier.table1_type
    declared = frontier.point_type
    if declared is not None and table1 is not None and declared > table1:
        found.append(
            Finding(
                "point_type_understated",
                ART_TABLE1,
                f"declared point type {declared} is less strict than type {table1} given by "
                f"Table 1 for the declared energy/capacity; type {table1} governs",
            )
        )
    elif declared is not None and table1 is not None and declared < table1:
        found.append(
            Finding(
                "point_type_differs",
                ART_TABLE1,
                f"declared point type {declared} is stricter than type {table1} given by "
                f"Table 1 for the declared energy/capacity; the declared type {declared} governs",
            )
        )
    principal = frontier.meter("principal")
    backup = frontier.meter("backup")
    if principal is None:
        found.append(Finding("principal_missing", "Código de Medida", "no principal meter"))
    if backup is None and rules.backup_required(point_type, frontier.kind, frontier.stn):
        reasons = []
        if frontier.kind == "generation":
            reasons.append("generation frontier")
        if frontier.stn:
            reasons.append("connected to the STN")
        if point_type in rules.BACKUP_REQUIRED_TYPES:
            reasons.append(f"point type {point_type}")
        found.append(
            Finding(
                "backup_missing",
                ART_BACKUP,
                f"backup meter required ({', '.join(reasons)}) but none is registered",
            )
        )
    for meter in frontier.meters:
        found.extend(_accuracy(meter, point_type))
        found.extend(_access(meter))
    if principal is not None and backup is not None:
        found.extend(_mismatch(principal, backup))
    return found
