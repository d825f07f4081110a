"""Reading inventory files (YAML or CSV) into validated frontiers, with line numbers.

Both formats become the same tree (``{"frontiers": [...]}``) plus a map from each path in
the tree to the file line it came from, so one validation serves both and every error
names ``file:line``. YAML lines come from the composer's node marks; CSV lines from the
reader. All errors of a file are collected, then raised together: an operator fixes a file
in one pass instead of one error per run.

Error texts never include input values (pydantic's ``include_input=False``, YAML problems
without the source snippet), because a malformed line may hold a secret.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from cgm.registry import rules
from cgm.registry.model import FrontierSpec

Path_ = tuple[str | int, ...]

# Fields that are text even when they look like numbers (serial 00123, class 1, code).
_FRONTIER_TEXT = {"code", "name", "network_operator"}
_METER_TEXT = {
    "serial", "manufacturer", "model",
    "accuracy_active", "accuracy_reactive", "ct_accuracy", "vt_accuracy",
}  # fmt: skip
_CREDENTIAL_TEXT = {"secret", "client"}
_RAW_TAGS = {
    "tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool",
}  # fmt: skip
_SECRET_LIKE = re.compile(r"pass(word|wd)?|secret|token", re.IGNORECASE)
YAML_VALUES_PER_BYTE = 4  # budget of values built per byte of YAML (see _yaml_tree)
# NUL and other control characters (C0, DEL, C1) are refused in every text of a file: they
# cannot be stored (PostgreSQL text refuses NUL) and are never part of a real name or code.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class Issue:
    file: str
    line: int | None
    where: str
    message: str

    def __str__(self) -> str:
        loc = f"{self.file}:{self.line}" if self.line else self.file
        return f"{loc}: {self.where}: {self.message}" if self.where else f"{loc}: {self.message}"


class InventoryError(Exception):
    """The inventory is malformed; nothing was (or will be) imported."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = sorted(issues, key=lambda i: (i.file, i.line or 0))
        super().__init__("\n".join(str(i) for i in self.issues))


@dataclass
class Inventory:
    """A validated inventory: frontiers plus where each frontier and meter was declared."""

    source: str
    frontiers: list[FrontierSpec]
    frontier_lines: dict[str, int | None] = field(default_factory=dict)
    meter_lines: dict[str, int | None] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def issue(self, *, frontier: str | None = None, meter: str | None = None, msg: str) -> Issue:
        """An error located at a frontier's or meter's line (for checks made later)."""
        if meter and frontier is None:
            frontier = next(
                (f.code for f in self.frontiers if any(m.serial == meter for m in f.meters)), ""
            )
        line = self.meter_lines.get(meter) if meter else self.frontier_lines.get(frontier or "")
        where = f"{frontier} meter {meter}" if meter else (frontier or "")
        return Issue(self.source, line, where, msg)


# --- YAML ---------------------------------------------------------------------------------


def _text_field(path: Path_) -> bool:
    key = path[-1] if path else None
    if len(path) == 3 and path[0] == "frontiers":
        return key in _FRONTIER_TEXT
    if len(path) == 5 and path[2] == "meters":
        return key in _METER_TEXT
    if len(path) == 7 and path[4] == "credentials":
        return key in _CREDENTIAL_TEXT
    return False


def _reader_issue(text: str, file: str, exc: yaml.reader.ReaderError) -> Issue:
    line = text.count("\n", 0, exc.position) + 1
    what = (
        f"control character U+{exc.character:04X} is not allowed"
        if isinstance(exc.character, int)
        else "the file is not valid UTF-8 text"
    )
    return Issue(file, line, "", what)


class _TooLarge(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


def _yaml_tree(text: str, file: str) -> tuple[Any, dict[Path_, int], list[Issue]]:
    lines: dict[Path_, int] = {(): 1}
    issues: list[Issue] = []
    try:
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as exc:  # a raw control character in the stream
        raise InventoryError([_reader_issue(text, file, exc)]) from None
    # Aliases let a few bytes name a tree of billions of values (an "alias bomb": 303 bytes
    # once took 2.8 GB). The tree is built here node by node, so every value built counts
    # against a budget proportional to the file; a real inventory (anchors for shared meter
    # settings, merge keys) stays far below it.
    budget = [YAML_VALUES_PER_BYTE * len(text) + 10_000]

    def build(node: yaml.Node, path: Path_) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise _TooLarge(node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            loader.flatten_mapping(node)  # YAML merge keys (<<)
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = loader.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if not isinstance(key, str | int):
                    issues.append(Issue(file, line, _dotted(path), "mapping key must be text"))
                    continue
                if key in out:
                    issues.append(Issue(file, line, _dotted(path), f"duplicate key {key!r}"))
                    continue
                lines[path + (key,)] = line
                out[key] = build(value_node, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            items = []
            for i, item in enumerate(node.value):
                lines[path + (i,)] = item.start_mark.line + 1
                items.append(build(item, path + (i,)))
            return items
        if node.tag in _RAW_TAGS and node.style is None and _text_field(path):
            return node.value  # as written: "00123" stays "00123", class 1 stays "1"
        return loader.construct_object(node, deep=True)

    try:
        root = loader.get_single_node()
        data = build(root, ()) if root is not None else {}
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        # problem/context only: str(exc) would quote the offending source line.
        what = exc.problem or exc.context or "invalid YAML"
        raise InventoryError([Issue(file, line, "", f"YAML syntax error: {what}")]) from None
    except yaml.reader.ReaderError as exc:
        raise InventoryError([_reader_issue(text, file, exc)]) from None
    except yaml.YAMLError:
        raise InventoryError([Issue(file, None, "", "YAML syntax error")]) from None
    except _TooLarge as exc:
        raise InventoryError(
            [Issue(file, exc.line, "", "YAML aliases expand to far more values than the file "
                   "holds (an alias bomb?); write the values out or use fewer aliases")]
        ) from None  # fmt: skip
    except RecursionError:
        raise InventoryError([Issue(file, None, "", "YAML nested too deeply")]) from None
    finally:
        loader.dispose()
    return data, lines, issues


# --- CSV ----------------------------------------------------------------------------------

# CSV column → frontier field. Frontier columns repeat on each meter row of the frontier.
CSV_FRONTIER_COLUMNS = {
    "frontier_code": "code",
    "frontier_name": "name",
    "kind": "kind",
    "stn": "stn",
    "voltage_level": "voltage_level",
    "installed_capacity_mva": "installed_capacity_mva",
    "monthly_energy_mwh": "monthly_energy_mwh",
    "adjustment_factor": "adjustment_factor",
    "point_type": "point_type",
    "clock_target_s": "clock_target_s",
    "network_operator": "network_operator",
    "asic_period": "asic_period",
    "calibration_interval_years": "calibration_interval_years",
}
CSV_METER_COLUMNS = (
    "serial", "role", "protocol", "endpoint", "backup_endpoint", "ct_ratio", "vt_ratio",
    "accuracy_active", "accuracy_reactive", "ct_accuracy", "vt_accuracy",
    "manufacturer", "model", "channels",
)  # fmt: skip
CSV_CREDENTIAL_COLUMNS = {
    "level1_secret": ("level1", "secret"),
    "level1_client": ("level1", "client"),
    "level2_secret": ("level2", "secret"),
    "level2_client": ("level2", "client"),
    # MQTT: the CGM's broker login (the client certificate file is param.client_cert).
    "broker_username": ("broker", "username"),
    "broker_password": ("broker", "password"),
    "broker_client_key": ("broker", "client_key"),
}
CSV_PARAM_PREFIX = "param."
CSV_ATTR_PREFIX = "attr."


def _csv_scalar(text: str) -> Any:
    """A ``param.*``/``attr.*`` cell: integer, decimal, true/false, else text."""
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    if re.fullmatch(r"[+-]?(\d+\.\d*|\.\d+)([eE][+-]?\d+)?", text):
        return float(text)
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def _csv_tree(text: str, file: str) -> tuple[Any, dict[Path_, int], list[Issue]]:
    issues: list[Issue] = []
    lines: dict[Path_, int] = {(): 1}
    first = text.splitlines()[0] if text else ""
    # Spreadsheets in Spanish locales write ';' (the comma is their decimal mark).
    delimiter = ";" if first.count(";") > first.count(",") else ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        return {"frontiers": []}, lines, issues
    except csv.Error as exc:
        raise InventoryError([Issue(file, reader.line_num, "", f"CSV error: {exc}")]) from None
    known = set(CSV_FRONTIER_COLUMNS) | set(CSV_METER_COLUMNS) | set(CSV_CREDENTIAL_COLUMNS)
    for col in header:
        if col in known or (
            col.startswith((CSV_PARAM_PREFIX, CSV_ATTR_PREFIX)) and col.count(".") == 1
        ):
            continue
        issues.append(Issue(file, 1, f"column {col!r}", "unknown column"))
    dupes = {c for c in header if header.count(c) > 1}
    for col in sorted(dupes):
        issues.append(Issue(file, 1, f"column {col!r}", "column appears more than once"))
    if "frontier_code" not in header:
        issues.append(Issue(file, 1, "", "missing column 'frontier_code'"))
    if issues:
        return {"frontiers": []}, lines, issues

    frontiers: list[dict[str, Any]] = []
    by_code: dict[str, int] = {}
    line = 1
    rows = iter(reader)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            break
        except csv.Error as exc:
            issues.append(Issue(file, reader.line_num, "", f"CSV error: {exc}"))
            break
        line, start = reader.line_num, line + 1
        cells = {col: (row[i].strip() if i < len(row) else "") for i, col in enumerate(header)}
        if not any(c.strip() for c in row) or row[0].lstrip().startswith("#"):
            continue  # blank or comment row
        if len(row) > len(header):
            issues.append(Issue(file, start, "", "more cells than header columns"))
            continue
        if len(row) < len(header):
            issues.append(
                Issue(
                    file,
                    start,
                    "",
                    f"{len(row)} cells, but the header has {len(header)} columns "
                    "(a short row would leave fields such as credentials empty)",
                )
            )
            continue
        code = cells["frontier_code"]
        if code not in by_code:
            by_code[code] = len(frontiers)
            frontiers.append({"meters": []})
            lines[("frontiers", by_code[code])] = start
        fi = by_code[code]
        fr = frontiers[fi]
        for col, key in CSV_FRONTIER_COLUMNS.items():
            value = cells.get(col, "")
            if not value:
                continue  # blank on later rows: the frontier's value from an earlier row
            if key in fr and fr[key] != value:
                issues.append(
                    Issue(
                        file,
                        start,
                        f"column {col}",
                        f"differs from line {lines[('frontiers', fi, key)]} for frontier {code}"
                        " (frontier columns must repeat the same value)",
                    )
                )
                continue
            if key not in fr:
                fr[key] = value
                lines[("frontiers", fi, key)] = start
        for col, value in cells.items():
            if col.startswith(CSV_ATTR_PREFIX) and value:
                attrs = fr.setdefault("attributes", {})
                attrs[col[len(CSV_ATTR_PREFIX) :]] = _csv_scalar(value)
                lines[("frontiers", fi, "attributes")] = start
        meter: dict[str, Any] = {}
        for col in CSV_METER_COLUMNS:
            value = cells.get(col, "")
            if value:
                meter[col] = (
                    [c for c in re.split(r"[;,\s]+", value) if c] if col == "channels" else value
                )
        for col, (level, key) in CSV_CREDENTIAL_COLUMNS.items():
            value = cells.get(col, "")
            if value:
                meter.setdefault("credentials", {}).setdefault(level, {})[key] = value
        for col, value in cells.items():
            if col.startswith(CSV_PARAM_PREFIX) and value:
                meter.setdefault("params", {})[col[len(CSV_PARAM_PREFIX) :]] = _csv_scalar(value)
        if meter:
            mi = len(fr["meters"])
            fr["meters"].append(meter)
            lines[("frontiers", fi, "meters", mi)] = start
    return {"frontiers": frontiers}, lines, issues


# --- validation ---------------------------------------------------------------------------


def _dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line_for(lines: dict[Path_, int], path: Path_) -> int | None:
    for n in range(len(path), -1, -1):
        if path[:n] in lines:
            return lines[path[:n]]
    return None


def _yaml_where(tree: dict[str, Any], path: Path_) -> str:
    """``Frt123.meters[1].ct_ratio`` when the frontier code is known, else the raw path."""
    if len(path) >= 2 and path[0] == "frontiers" and isinstance(path[1], int):
        frontiers = tree.get("frontiers") or []
        fr = frontiers[path[1]] if path[1] < len(frontiers) else None
        if isinstance(fr, dict) and isinstance(fr.get("code"), str):
            rest = _dotted(path[2:])
            return fr["code"] + ("" if not rest else rest if rest.startswith("[") else "." + rest)
    return _dotted(path)


_REVERSE_FRONTIER = {v: k for k, v in CSV_FRONTIER_COLUMNS.items()}


def _csv_where(tree: dict[str, Any], path: Path_) -> str:
    """The CSV column a tree path came from."""
    rest = path[2:]
    if not rest:
        return ""
    if rest[0] == "meters":
        sub = rest[2:]
        if not sub:
            return ""
        if sub[0] == "credentials" and len(sub) >= 3:
            return f"column {sub[1]}_{sub[2]}"
        if sub[0] == "credentials" and len(sub) == 2:
            return f"columns {sub[1]}_*"
        if sub[0] == "params" and len(sub) >= 2:
            return f"column {CSV_PARAM_PREFIX}{sub[1]}"
        return f"column {sub[0]}"
    if rest[0] == "attributes" and len(rest) >= 2:
        return f"column {CSV_ATTR_PREFIX}{rest[1]}"
    return f"column {_REVERSE_FRONTIER.get(str(rest[0]), rest[0])}"


def _message(err: dict[str, Any]) -> str:
    kind = err.get("type")
    if kind == "extra_forbidden":
        return "unknown field (not part of the inventory format; check the spelling)"
    if kind == "missing":
        return "required field is missing"
    msg = str(err.get("msg", "invalid"))
    return msg.removeprefix("Value error, ")


def _validate(
    tree: Any, lines: dict[Path_, int], file: str, where: Callable[[dict, Path_], str]
) -> Inventory:
    issues: list[Issue] = []
    if not isinstance(tree, dict):
        raise InventoryError([Issue(file, 1, "", "top level must be a mapping with 'frontiers'")])
    for key in tree:
        if key != "frontiers":
            issues.append(Issue(file, _line_for(lines, (key,)), str(key), _message(
                {"type": "extra_forbidden"})))  # fmt: skip
    raw = tree.get("frontiers") or []
    if not isinstance(raw, list):
        issues.append(Issue(file, _line_for(lines, ("frontiers",)), "frontiers", "must be a list"))
        raw = []
    inv = Inventory(file, [])
    seen_codes: dict[str, int | None] = {}
    seen_serials: dict[str, str] = {}
    for i, item in enumerate(raw):
        base: Path_ = ("frontiers", i)
        fline = _line_for(lines, base)
        if not isinstance(item, dict):
            issues.append(Issue(file, fline, where(tree, base), "must be a mapping"))
            continue
        try:
            fr = FrontierSpec.model_validate(item)
        except ValidationError as exc:
            for err in exc.errors(include_input=False, include_url=False, include_context=False):
                path = base + tuple(err["loc"])
                issues.append(Issue(file, _line_for(lines, path), where(tree, path), _message(err)))
            continue
        if fr.code in seen_codes:
            issues.append(
                Issue(file, fline, fr.code, f"frontier also declared at line {seen_codes[fr.code]}")
            )
            continue
        seen_codes[fr.code] = fline
        inv.frontier_lines[fr.code] = fline
        roles: set[str] = set()
        for j, meter in enumerate(fr.meters):
            mpath = base + ("meters", j)
            mline = _line_for(lines, mpath)
            mwhere = where(tree, mpath) or f"{fr.code} meter {meter.serial}"
            if meter.serial in seen_serials:
                issues.append(
                    Issue(
                        file,
                        mline,
                        mwhere,
                        f"meter {meter.serial} is already listed under "
                        f"{seen_serials[meter.serial]}",
                    )
                )
            seen_serials.setdefault(meter.serial, fr.code)
            if meter.role in roles:
                issues.append(Issue(file, mline, mwhere, f"more than one {meter.role} meter"))
            roles.add(meter.role)
            for key in meter.params:
                if _SECRET_LIKE.search(str(key)):
                    issues.append(
                        Issue(
                            file,
                            _line_for(lines, mpath + ("params", key)),
                            where(tree, mpath + ("params", key)),
                            "looks like a secret: give it under credentials, not params",
                        )
                    )
            inv.meter_lines[meter.serial] = mline
            broker = meter.credentials.broker
            if broker is not None and meter.protocol != "mqtt":
                issues.append(
                    Issue(file, mline, mwhere, "credentials.broker is for MQTT meters only")
                )
            if broker is not None and not broker.from_env:
                inv.warnings.append(
                    f"{file}:{mline}: {fr.code} meter {meter.serial}: broker secret is inline "
                    "in the file; prefer env:VARNAME"
                )
            for level, cred in meter.credentials.by_level().items():
                if not cred.from_env:
                    inv.warnings.append(
                        f"{file}:{mline}: {fr.code} meter {meter.serial}: level {int(level)} "
                        "secret is inline in the file; prefer env:VARNAME"
                    )
        limit = rules.TABLE3_CLOCK_DRIFT_S[fr.effective_point_type]
        if fr.clock_target_s is not None and fr.clock_target_s > limit:
            inv.warnings.append(
                f"{file}:{fline}: {fr.code}: clock_target_s {fr.clock_target_s:g} is looser "
                f"than the {limit:g} s of Table 3 for type {fr.effective_point_type}; "
                f"{limit:g} s applies"
            )
        inv.frontiers.append(fr)
    if issues:
        raise InventoryError(issues)
    return inv


def _control_characters(
    tree: Any, lines: dict[Path_, int], file: str, where: Callable[[dict, Path_], str]
) -> list[Issue]:
    """Every text (key or value) holding a control character, at its line."""
    issues: list[Issue] = []

    def visit(value: Any, path: Path_) -> None:
        if isinstance(value, str):
            bad = _CONTROL.search(value)
            if bad:
                issues.append(
                    Issue(
                        file,
                        _line_for(lines, path),
                        _CONTROL.sub(
                            "?", where(tree, path) if isinstance(tree, dict) else _dotted(path)
                        ),
                        f"control character U+{ord(bad.group()):04X} is not allowed",
                    )
                )
        elif isinstance(value, dict):
            for key, item in value.items():
                visit(key, path + (key,))
                visit(item, path + (key,))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                visit(item, path + (i,))

    visit(tree, ())
    return issues


def parse(text: str, file: str, fmt: str) -> Inventory:
    """Validate inventory ``text`` in format ``yaml`` or ``csv``; ``file`` names it in errors."""
    if fmt == "yaml":
        tree, lines, issues = _yaml_tree(text, file)
        where = _yaml_where
    elif fmt == "csv":
        tree, lines, issues = _csv_tree(text, file)
        where = _csv_where
    else:
        raise ValueError(f"unknown inventory format {fmt!r}")
    control = _control_characters(tree, lines, file, where)
    if control:
        raise InventoryError(issues + control)
    try:
        inv = _validate(tree, lines, file, where)
    except InventoryError as exc:
        raise InventoryError(issues + exc.issues) from None
    if issues:
        raise InventoryError(issues)
    return inv


def load(path: str | Path) -> Inventory:
    """Read and validate an inventory file (``.yaml``/``.yml`` or ``.csv``)."""
    p = Path(path)
    suffix = p.suffix.lower()
    fmt = {".yaml": "yaml", ".yml": "yaml", ".csv": "csv"}.get(suffix)
    if fmt is None:
        raise InventoryError([Issue(str(p), None, "", "inventory must be .yaml, .yml or .csv")])
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InventoryError([Issue(str(p), None, "", f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise InventoryError([Issue(str(p), None, "", "not UTF-8 text")]) from None
    return parse(text, str(p), fmt)
