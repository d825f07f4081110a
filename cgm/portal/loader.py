"""Reading a portal inventory (YAML) into validated units, all or nothing, ``file:line`` errors.

Same contract as the frontier registry's loader (cgm.registry.loader): every problem of a
file is collected and raised together, each at the line it came from, without echoing input
values. Scalars are kept as written (a client number ``00123`` stays ``00123``; YAML 1.1
would read it as octal) and typed by the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from cgm.portal.model import UnitSpec
from cgm.registry.loader import InventoryError, Issue, _line_for, _message

Path_ = tuple[str | int, ...]
_NULL = {"", "~", "null", "Null", "NULL"}


@dataclass
class PortalInventory:
    source: str
    units: list[UnitSpec]
    unit_lines: dict[str, int | None] = field(default_factory=dict)


def _tree(text: str, file: str) -> tuple[Any, dict[Path_, int], list[Issue]]:
    lines: dict[Path_, int] = {(): 1}
    issues: list[Issue] = []

    def build(node: yaml.Node, path: Path_, depth: int = 0) -> Any:
        if depth > 20:
            raise RecursionError
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for k, v in node.value:
                line = k.start_mark.line + 1
                if not isinstance(k, yaml.ScalarNode):
                    issues.append(Issue(file, line, "", "mapping key must be text"))
                    continue
                if k.value in out:
                    issues.append(Issue(file, line, "", f"duplicate key {k.value!r}"))
                    continue
                lines[path + (k.value,)] = line
                out[k.value] = build(v, path + (k.value,), depth + 1)
            return out
        if isinstance(node, yaml.SequenceNode):
            items = []
            for i, item in enumerate(node.value):
                lines[path + (i,)] = item.start_mark.line + 1
                items.append(build(item, path + (i,), depth + 1))
            return items
        if node.style is None and node.value in _NULL:
            return None
        return node.value

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is not None and any(
            isinstance(e, yaml.AliasEvent) for e in yaml.parse(text, Loader=yaml.SafeLoader)
        ):
            raise InventoryError([Issue(file, None, "", "YAML aliases are not accepted here")])
        data = build(root, ()) if root is not None else {}
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or exc.context or "invalid YAML"
        line = mark.line + 1 if mark else None
        raise InventoryError([Issue(file, line, "", f"YAML syntax error: {what}")]) from None
    except yaml.YAMLError:
        raise InventoryError([Issue(file, None, "", "YAML syntax error")]) from None
    except RecursionError:
        raise InventoryError([Issue(file, None, "", "YAML nested too deeply")]) from None
    return data, lines, issues


def _where(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse(text: str, file: str) -> PortalInventory:
    """Validate a portal inventory; raise :class:`InventoryError` with every problem."""
    tree, lines, issues = _tree(text, file)
    if not isinstance(tree, dict):
        raise InventoryError([Issue(file, 1, "", "top level must be a mapping with 'units'")])
    for key in tree:
        if key != "units":
            issues.append(Issue(file, _line_for(lines, (key,)), key, "unknown field"))
    raw = tree.get("units") or []
    if not isinstance(raw, list):
        raise InventoryError(
            issues + [Issue(file, lines.get(("units",)), "units", "must be a list")]
        )
    inv = PortalInventory(file, [])
    seen_units: dict[str, int | None] = {}
    seen_meters: dict[str, int | None] = {}
    seen_clients: dict[tuple[str, str], str] = {}
    for i, item in enumerate(raw):
        base: Path_ = ("units", i)
        line = _line_for(lines, base)
        try:
            unit = UnitSpec.model_validate(item)
        except ValidationError as exc:
            for err in exc.errors(include_input=False, include_url=False, include_context=False):
                path = base + tuple(err["loc"])
                issues.append(Issue(file, _line_for(lines, path), _where(path), _message(err)))
            continue
        if unit.code in seen_units:
            issues.append(
                Issue(file, line, unit.code, f"unit also declared at line {seen_units[unit.code]}")
            )
            continue
        seen_units[unit.code] = line
        inv.unit_lines[unit.code] = line
        for c, cn in enumerate(unit.client_numbers):
            key = (cn.company.casefold(), cn.number)
            cpath = base + ("client_numbers", c)
            if key in seen_clients:
                issues.append(
                    Issue(
                        file, _line_for(lines, cpath), f"{unit.code} client {cn.number}",
                        f"client number {cn.company} {cn.number} already exists (created by unit "
                        f"{seen_clients[key]}); associate with its meters under 'associate'",
                    )
                )  # fmt: skip
            seen_clients.setdefault(key, unit.code)
            for m, meter in enumerate(cn.meters):
                mline = _line_for(lines, cpath + ("meters", m))
                if meter.number in seen_meters:
                    issues.append(
                        Issue(
                            file, mline, f"{unit.code} meter {meter.number}",
                            f"duplicate meter number (also at line {seen_meters[meter.number]})",
                        )
                    )  # fmt: skip
                seen_meters.setdefault(meter.number, mline)
        inv.units.append(unit)
    if issues:
        raise InventoryError(issues)
    return inv


def load(path: str | Path) -> PortalInventory:
    p = Path(path)
    if p.suffix.lower() not in (".yaml", ".yml"):
        raise InventoryError([Issue(str(p), None, "", "a portal inventory is .yaml or .yml")])
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InventoryError([Issue(str(p), None, "", f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise InventoryError([Issue(str(p), None, "", "not UTF-8 text")]) from None
    return parse(text, str(p))
