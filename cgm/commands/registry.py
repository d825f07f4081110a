"""``cgm registry import|validate|list``: the frontier inventory.

``validate`` needs no database (syntax, Código checks); ``import --dry-run`` also checks the
file against the registry and rolls back. Exit status: 0 fine, 1 violations found (validate
only: import still loads them), 2 malformed file (nothing written).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import psycopg

from cgm import registry
from cgm.cli import CommandError
from cgm.commands.cliauth import add_auth_args, login
from cgm.config import get_settings
from cgm.db import current_url
from cgm.progress import Progress
from cgm.registry import compliance
from cgm.security import SecretKeyError, secret_box


def register(sub: argparse._SubParsersAction) -> None:
    reg = sub.add_parser("registry", help="frontiers, meters and credentials")
    rsub = reg.add_subparsers(dest="registry_command", required=True, metavar="ACTION")

    imp = rsub.add_parser("import", help="load a YAML or CSV inventory (upsert, all or nothing)")
    imp.add_argument("file", help="inventory .yaml/.yml or .csv")
    add_auth_args(imp)  # the authenticated level-2 user is the actor in the audit log
    imp.add_argument("--dry-run", action="store_true", help="check against the registry, roll back")
    imp.add_argument("--market-users", action="store_true",
                     help="then create/update the network operators' and the ASIC's level-1 "
                     "users, scoped from the registry (cgm user sync-market)")  # fmt: skip
    imp.add_argument("--passwords-file", type=Path, metavar="FILE",
                     help="with --market-users: write new users' passwords here (0600)")
    imp.set_defaults(func=_import)

    val = rsub.add_parser("validate", help="check an inventory without a database")
    val.add_argument("file")
    val.set_defaults(func=_validate)

    lst = rsub.add_parser("list", help="print the registry (never secrets)")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    lst.add_argument("--frontier", metavar="CODE", help="only this frontier")
    lst.set_defaults(func=_list)


def _load(path: str) -> registry.Inventory:
    try:
        return registry.load(path)
    except registry.InventoryError as exc:
        n = len(exc.issues)
        raise CommandError(f"{path}: {n} error(s), nothing imported\n{exc}") from None


def _print_findings(violations: dict[str, list[compliance.Finding]]) -> None:
    for code, findings in sorted(violations.items()):
        for f in findings:
            subject = f" meter {f.subject}" if f.subject else ""
            print(f"violation: {code}{subject}: {f.rule}: {f.message} ({f.article})")


def _validate(args: argparse.Namespace) -> int:
    inv = _load(args.file)
    for w in inv.warnings:
        print(f"warning: {w}", file=sys.stderr)
    violations = {fr.code: found for fr in inv.frontiers if (found := compliance.check(fr))}
    _print_findings(violations)
    meters = sum(len(fr.meters) for fr in inv.frontiers)
    print(
        f"{args.file}: {len(inv.frontiers)} frontier(s), {meters} meter(s), "
        f"{sum(len(v) for v in violations.values())} violation(s)"
    )
    return 1 if violations else 0


def _import(args: argparse.Namespace) -> int:
    inv = _load(args.file)
    settings = get_settings()
    try:
        box = secret_box(settings)
    except SecretKeyError as exc:
        raise CommandError(str(exc)) from None
    url = current_url(settings)
    user = login(url, args)
    with psycopg.connect(url) as conn:
        try:
            with Progress("importing frontiers", len(inv.frontiers)) as bar:
                report = registry.import_inventory(
                    conn, inv, box, actor=f"cli:{user.username}", dry_run=args.dry_run,
                    progress=bar.advance,
                )  # fmt: skip
        except registry.InventoryError as exc:
            raise CommandError(f"{args.file}: nothing imported\n{exc}") from None
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    _print_findings(report.violations)
    r = report
    print(
        f"{'dry run, rolled back: ' if r.dry_run else ''}"
        f"frontiers {r.frontiers_inserted} new, {r.frontiers_updated} updated, "
        f"{r.frontiers_unchanged} unchanged; meters {r.meters_inserted} new, "
        f"{r.meters_updated} updated, {r.meters_unchanged} unchanged, "
        f"{r.meters_deactivated} deactivated; credentials {r.credentials_changed} changed; "
        f"{sum(len(v) for v in r.violations.values())} violation(s)"
    )
    if args.market_users and not args.dry_run:
        from cgm.commands.user import sync_market

        sync_market(url, f"cli:{user.username}", "asic", args.passwords_file)
    return 0


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _list(args: argparse.Namespace) -> int:
    settings = get_settings()
    with psycopg.connect(current_url(settings)) as conn:
        data = registry.list_registry(conn, args.frontier)
    if args.json:
        print(registry.to_json(data))
        return 0
    for fr in data:
        explicit = " (explicit)" if fr["point_type_explicit"] else ""
        print(
            f"{fr['code']}  {fr['name']}  {fr['kind']}{'  STN' if fr['stn'] else ''}  "
            f"level {fr['voltage_level']}  type {fr['point_type']}{explicit}  "
            f"clock ≤ {_fmt(fr['clock_limit_s'])} s  "
            f"C={_fmt(fr['monthly_energy_mwh'])} MWh/month  "
            f"CI={_fmt(fr['installed_capacity_mva'])} MVA"
        )
        for m in fr["meters"]:
            backup = f" (alt {m['backup_endpoint']})" if m["backup_endpoint"] else ""
            levels = ",".join(str(c["level"]) for c in m["credentials"]) or "none"
            state = "" if m["active"] else "  [inactive]"
            print(
                f"  {m['role']:<9} {m['serial']}  {m['protocol']} {m['endpoint']}{backup}  "
                f"CT {_fmt(m['ct_ratio'])} VT {_fmt(m['vt_ratio'])}  "
                f"class {m['accuracy_active'] or '?'}/{m['accuracy_reactive'] or '?'}  "
                f"credentials: level {levels}{state}"
            )
        for v in fr["violations"]:
            subject = f" [{v['subject']}]" if v["subject"] else ""
            print(f"  ! {v['rule']}{subject}: {v['message']} ({v['article']})")
    if not data:
        print("registry is empty" if not args.frontier else f"no frontier {args.frontier}")
    return 0
