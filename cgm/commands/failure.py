"""``cgm failure open|close|list|notice``: failures and thefts against Table 5 (art. 36).

Writes log a level-2 cgm user in (``--user`` with ``--password-env`` or a prompt, through
cgm/commands/cliauth.py); the actor recorded is ``cli:<user>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import psycopg

from cgm import failures
from cgm.cli import CommandError
from cgm.commands.cliauth import add_auth_args, login_async
from cgm.config import get_settings
from cgm.db import current_url


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("failure", help="failures and thefts of measuring elements (Table 5)")
    fsub = p.add_subparsers(dest="failure_command", metavar="ACTION", required=True)
    o = fsub.add_parser("open", help="record a failure or theft (level 2)")
    o.add_argument("--frontier", required=True, metavar="CODE")
    o.add_argument("--element", required=True, choices=failures.ELEMENTS)
    o.add_argument("--kind", default="failure", choices=failures.KINDS)
    o.add_argument("--at", required=True, type=datetime.fromisoformat, help="ISO, with zone")
    o.add_argument("--description", required=True)
    add_auth_args(o)
    o.set_defaults(func=_open)
    c = fsub.add_parser("close", help="close a failure or theft (level 2)")
    c.add_argument("event", type=int)
    c.add_argument("--at", required=True, type=datetime.fromisoformat, help="ISO, with zone")
    c.add_argument("--note", required=True)
    add_auth_args(c)
    c.set_defaults(func=_close)
    ls = fsub.add_parser("list", help="Table 5 count per frontier over the previous 12 months")
    ls.add_argument("--frontier", action="append", metavar="CODE")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_list)
    n = fsub.add_parser("notice", help="the notice of one event for the ASIC (JSON)")
    n.add_argument("event", type=int)
    n.set_defaults(func=_notice)


def _run(go: Any) -> Any:
    try:
        return asyncio.run(go())
    except (LookupError, ValueError) as exc:
        raise CommandError(str(exc)) from None


def _open(args: argparse.Namespace) -> int:
    url = current_url(get_settings())

    async def go() -> tuple[int, failures.Count]:
        actor = f"cli:{(await login_async(url, args)).username}"
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            return await failures.open_event(
                conn, frontier=args.frontier, element=args.element, kind=args.kind,
                started_at=args.at, description=args.description, actor=actor,
            )  # fmt: skip

    eid, c = _run(go)
    print(f"event {eid} opened; {args.frontier}: {c.count} of {c.limit} failures ({c.status})")
    return 0


def _close(args: argparse.Namespace) -> int:
    url = current_url(get_settings())

    async def go() -> None:
        actor = f"cli:{(await login_async(url, args)).username}"
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await failures.close_event(
                conn, args.event, ended_at=args.at, note=args.note, actor=actor
            )

    _run(go)
    print(f"event {args.event} closed")
    return 0


def _list(args: argparse.Namespace) -> int:
    url = current_url(get_settings())

    async def go() -> dict[str, failures.Count]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            return await failures.fleet_counts(conn, datetime.now(UTC), frontiers=args.frontier)

    counts = _run(go)
    if args.json:
        print(json.dumps({k: v.as_dict() for k, v in sorted(counts.items())}, indent=2))
        return 0
    for code, c in sorted(counts.items()):
        print(f"{code}  year {c.year}  {c.count}/{c.limit}  {c.status}")
    return 0


def _notice(args: argparse.Namespace) -> int:
    settings = get_settings()
    url = current_url(settings)

    async def go() -> dict[str, object]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            return await failures.notice(
                conn, args.event, cgm_code=settings.cgm_code, now=datetime.now(UTC)
            )

    print(json.dumps(_run(go), ensure_ascii=False, indent=2))
    return 0
