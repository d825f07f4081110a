"""``cgm audit verify``: recompute the audit hash chains and report the first break.

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
    p = sub.add_parser("audit", help="audit trail integrity")
    asub = p.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
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
