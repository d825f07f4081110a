"""``cgm audit [check] [--json] [--frontier CODE]``: every frontier against what the CGM can
check, pass or fail with evidence (cgm/compliance_audit.py), plus the audit chains; exit 1
when anything fails. ``cgm audit verify``: recompute the audit hash chains and report the
first break.

    cgm audit verify [--anchor CHAIN:SEQ:HEX ...] [--json]

Exit status 0 when both chains are intact, 1 at the first break (or a failed anchor).
The heads printed are what to record elsewhere (e.g. with each ASIC report) and give back
later as ``--anchor``.
"""

from __future__ import annotations

import argparse
import json

from cgm.cli import CommandError
from cgm.config import get_settings
from cgm.db import current_url
from cgm.storage.audit import Anchor, verify


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="compliance of every frontier; audit trail integrity")
    p.add_argument("--json", action="store_true")
    p.add_argument("--frontier", action="append", metavar="CODE", help="only these frontiers")
    p.set_defaults(func=_check)
    asub = p.add_subparsers(dest="audit_command", metavar="ACTION")
    c = asub.add_parser("check", help="the compliance report (the default action)")
    c.add_argument("--json", action="store_true")
    c.add_argument("--frontier", action="append", metavar="CODE", help="only these frontiers")
    c.set_defaults(func=_check)
    v = asub.add_parser("verify", help="recompute the hash chains; report the first break")
    v.add_argument(
        "--anchor",
        action="append",
        default=[],
        metavar="CHAIN:SEQ:HEX",
        help="a head recorded earlier that must still be in the chain (repeatable)",
    )
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=_verify)


def _check(args: argparse.Namespace) -> int:
    import asyncio

    import psycopg

    from cgm.compliance_audit import CHECKS, audit
    from cgm.security import SecretKeyError, secret_box

    settings = get_settings()
    url = current_url(settings)
    try:
        box = secret_box(settings)  # to compare the two levels' secrets, in memory only
    except SecretKeyError:
        box = None  # the access check then fails, saying the secrets were not compared

    async def go() -> list:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            return await audit(conn, frontiers=args.frontier, box=box)

    results = asyncio.run(go())
    if args.frontier:
        known = {r.code for r in results}
        unknown = [c for c in args.frontier if c not in known]
        if unknown:
            raise CommandError(f"unknown frontier {', '.join(unknown)}")
    chains = verify(url, [])
    failed = [r for r in results if not r.ok]
    if args.json:
        print(json.dumps({
            "ok": not failed and chains.ok,
            "frontiers": len(results),
            "failed": len(failed),
            "audit_chain": {"ok": chains.ok, "chains": [
                {"chain": c.chain, "rows": c.rows, "ok": c.ok, "problem": c.problem}
                for c in chains.chains]},
            "results": [r.as_dict() for r in results],
        }, indent=2, ensure_ascii=False))  # fmt: skip
    else:
        for r in results:
            print(f"{r.code}  {'PASS' if r.ok else 'FAIL'}")
            for check in CHECKS:
                for evidence in r.failures.get(check, []):
                    print(f"  FAIL {check}: {evidence}")
        problems = [f"{c.chain}: {c.problem}" for c in chains.chains if not c.ok]
        print(f"audit chain  {'PASS' if chains.ok else 'FAIL ' + '; '.join(problems)}")
        print(f"{len(results) - len(failed)} of {len(results)} frontiers pass")
    return 0 if not failed and chains.ok else 1


def _verify(args: argparse.Namespace) -> int:
    try:
        anchors = [Anchor.parse(a) for a in args.anchor]
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    report = verify(current_url(get_settings()), anchors)
    if args.json:
        print(
            json.dumps(
                {
                    "ok": report.ok,
                    "chains": [
                        {
                            "chain": c.chain,
                            "rows": c.rows,
                            "ok": c.ok,
                            "problem": c.problem,
                            "head": str(c.head) if c.head else None,
                        }
                        for c in report.chains
                    ],
                },
                indent=2,
            )
        )
    else:
        for c in report.chains:
            state = "ok" if c.ok else f"BROKEN: {c.problem}"
            print(f"{c.chain}: {c.rows} rows, {state}")
            if c.head:
                print(f"  head {c.head}")
    return 0 if report.ok else 1
