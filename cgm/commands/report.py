"""``cgm report``: the ASIC report on demand, its status per frontier, and holds.

cgm report asic [--day D] [--frontier CODE ...] [--dry-run --out DIR] [--wait S] [--json]
cgm report status [--day D] [--json]
cgm report hold --frontier CODE --reason TEXT --user NAME [--password-env VAR]
cgm report release --frontier CODE --reason TEXT --user NAME [--password-env VAR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg

from cgm.cli import CommandError
from cgm.commands import report_annual
from cgm.commands.cliauth import add_auth_args, login, login_async
from cgm.config import get_settings
from cgm.db import current_url
from cgm.localtime import COLOMBIA, local_day
from cgm.reporting import holds
from cgm.reporting.asic.delivery import (
    AsicReporter,
    NotConfigured,
    deadline,
    transport_from_settings,
)
from cgm.reporting.asic.status import day_status


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text}") from None


def _yesterday() -> date:
    return local_day(datetime.now(UTC)) - timedelta(days=1)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="reports to the ASIC: send, status, holds")
    rsub = p.add_subparsers(dest="report_command", required=True, metavar="WHAT")
    report_annual.register(rsub)

    a = rsub.add_parser("asic", help="build (and send) one day's documents to the ASIC")
    a.add_argument("--day", type=_day, help="Colombian local day (default: yesterday)")
    a.add_argument("--frontier", action="append", metavar="CODE", help="only these frontiers")
    a.add_argument("--dry-run", action="store_true", help="build only; write files to --out")
    a.add_argument("--out", type=Path, help="directory for --dry-run files")
    a.add_argument(
        "--wait", type=float, default=60.0, help="seconds to follow the ASIC's answer (0: not)"
    )
    a.add_argument("--json", action="store_true")
    a.add_argument(
        "--resend",
        action="store_true",
        help="send the day's documents again whatever the ASIC answered before "
        "(level 2: needs --user and --reason)",
    )
    a.add_argument("--user", help="level-2 user authorising --resend (password prompted)")
    a.add_argument("--password-env", metavar="VAR", help="take --user's password from $VAR")
    a.add_argument("--reason", help="why the documents are sent again (kept in the log)")
    a.set_defaults(func=_asic)

    s = rsub.add_parser("status", help="what was sent for a day and what the ASIC answered")
    s.add_argument("--day", type=_day, help="Colombian local day (default: yesterday)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_status)

    for name, helptext in (
        ("hold", "hold a frontier for manual review: not reported until released"),
        ("release", "release a held frontier"),
    ):
        h = rsub.add_parser(name, help=helptext)
        h.add_argument("--frontier", required=True, metavar="CODE")
        h.add_argument("--reason", required=True)
        add_auth_args(h)
        h.set_defaults(func=_hold if name == "hold" else _release)


def _asic(args: argparse.Namespace) -> int:
    settings = get_settings()
    url = current_url(settings)
    day = args.day or _yesterday()
    if args.dry_run:
        if not args.out:
            raise CommandError("--dry-run needs --out DIR")
        build = asyncio.run(AsicReporter(url, settings, None).dry_run(day, args.out, args.frontier))
        print(f"{day}: {len(build.documents)} documents written to {args.out}")
        for code, why in sorted(build.not_ready.items()):
            print(f"  not ready  {code}: {why}")
        for code, why in sorted(build.held.items()):
            print(f"  held       {code}: {why}")
        for e in build.estimation_report():
            print(
                f"  estimated  {e['frontier']} {e['serie']} periods {e['periodos']} ({e['metodo']})"
            )
        return 0
    try:
        transport = transport_from_settings(settings)
    except NotConfigured as exc:
        raise CommandError(str(exc)) from None

    resend_actor = _resend_actor(url, args) if args.resend else None

    async def run() -> tuple[dict, int]:
        reporter = AsicReporter(url, settings, transport)
        try:
            if resend_actor is not None:
                marked = await reporter.mark_for_resend(
                    day, args.frontier, actor=resend_actor, reason=args.reason
                )
                print(f"{day}: {len(marked)} documents marked for re-send by {resend_actor}")
            result = await reporter.report_day(day, args.frontier)
            open_ = 0
            if args.wait > 0:
                step = min(2.0, args.wait)
                open_ = await reporter.poll(rounds=max(1, int(args.wait / step)), interval_s=step)
            return result.as_dict(), open_
        finally:
            await transport.aclose()

    summary, open_ = asyncio.run(run())
    if args.json:
        print(json.dumps({**summary, "still_processing": open_}, indent=2, ensure_ascii=False))
    else:
        print(f"{day}: {summary['documents']} documents built")
        for key in ("sent", "unchanged", "late"):
            print(f"  {key:<10} {len(summary[key])}")
        for name, why in {**summary["failed"], **summary["rejected"]}.items():
            print(f"  failed     {name}: {why}")
        for code, why in sorted(summary["not_ready"].items()):
            print(f"  not ready  {code}: {why}")
        for code, why in sorted(summary["held"].items()):
            print(f"  held       {code}: {why}")
        if open_:
            print(f"  {open_} message(s) still processing: see `cgm report status --day {day}`")
    return 1 if summary["failed"] or summary["rejected"] else 0


def _resend_actor(url: str, args: argparse.Namespace) -> str:
    """The level-2 user who authorises a re-send (as ``cgm vee edit``), as an actor name."""
    if not args.day:
        raise CommandError("--resend needs --day (the day to send again)")
    if not args.user or not args.reason or not args.reason.strip():
        raise CommandError("--resend needs --user NAME and --reason TEXT")
    return f"cli:{login(url, args).username}"


def _status(args: argparse.Namespace) -> int:
    settings = get_settings()
    url = current_url(settings)
    day = args.day or _yesterday()

    async def run() -> list:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            return await day_status(conn, day)

    rows = asyncio.run(run())
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=2, ensure_ascii=False))
        return 0
    due = deadline(settings, day)
    left = due - datetime.now(UTC)
    print(
        f"ASIC report of {day} (times in Colombia); deadline {due:%Y-%m-%d %H:%M}"
        + (
            f", {left.total_seconds() / 3600:.1f} h left"
            if left.total_seconds() > 0
            else ", passed"
        )
    )
    for fr in rows:
        hold = f"  HELD: {fr.held}" if fr.held else ""
        if not fr.documents:
            print(f"{fr.frontier:<12} not sent{hold}")
            continue
        print(f"{fr.frontier}{hold}")
        for d in fr.documents:
            sent = d.sent_at.astimezone(COLOMBIA).strftime("%Y-%m-%d %H:%M") if d.sent_at else "-"
            est = sum(len(e["periodos"]) for e in d.estimated)
            print(
                f"  {d.role:<9} {d.file_name:<28} {d.kind:<10} v{d.settled_version:<3} "
                f"sent {sent:<16} msg {d.message_id or '-':<12} {d.state}"
                + (f" ({est} estimated h)" if est else "")
                + (f": {d.detail}" if d.detail else "")
            )
    return 0


def _hold(args: argparse.Namespace) -> int:
    return _hold_or_release(args, holds.hold, "held", "was already held")


def _release(args: argparse.Namespace) -> int:
    return _hold_or_release(args, holds.release, "released", "was not held")


def _hold_or_release(args: argparse.Namespace, action, done: str, noop: str) -> int:  # noqa: ANN001
    url = current_url(get_settings())

    async def run() -> bool:
        user = await login_async(url, args)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            return await action(conn, args.frontier, args.reason, f"cli:{user.username}")

    try:
        changed = asyncio.run(run())
    except (holds.UnknownFrontier, ValueError) as exc:
        raise CommandError(str(exc)) from None
    print(f"{args.frontier} {done}" if changed else f"{args.frontier} {noop}")
    return 0
