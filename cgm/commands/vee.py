"""``cgm vee``: settle a day on demand, edit a settled value, import SCADA power.

    cgm vee --day 2026-11-20 [--frontier Frt10001] [--json]
    cgm vee edit --frontier Frt10001 --channel active_import \\
        --period-start 2026-11-20T05:00:00+00:00 --value 12.5 --reason "..." --user NAME
    cgm vee import-power samples.csv

``edit`` logs the level-2 user in as every CLI write does (cgm/commands/cliauth.py) and
records the edit as ``cli:<user>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import date, datetime, timedelta
from pathlib import Path

import psycopg

from cgm.cli import CommandError
from cgm.commands.cliauth import add_auth_args, login_async
from cgm.config import get_settings
from cgm.db import current_url


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vee", help="validation, estimation and editing of settled series")
    p.add_argument("--day", type=date.fromisoformat, help="local day to settle (YYYY-MM-DD)")
    p.add_argument(
        "--to",
        type=date.fromisoformat,
        metavar="DAY",
        help="settle every day from --day through this one (progress shown on a terminal)",
    )
    p.add_argument("--frontier", dest="run_frontier", metavar="CODE", help="only this frontier")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run)
    vsub = p.add_subparsers(dest="vee_command", metavar="ACTION")

    e = vsub.add_parser("edit", help="replace one settled value by hand (level 2)")
    e.add_argument("--frontier", required=True, metavar="CODE")
    e.add_argument("--channel", required=True, help="active_import, reactive_export, …")
    e.add_argument(
        "--period-start", required=True, type=datetime.fromisoformat, help="ISO, with zone"
    )
    e.add_argument("--value", required=True, type=float, help="primary kWh/kvarh")
    e.add_argument("--reason", required=True)
    add_auth_args(e)
    e.set_defaults(func=_edit)

    i = vsub.add_parser("import-power", help="import SCADA active-power samples (CSV)")
    i.add_argument("file", type=Path)
    i.add_argument("--source", default="scada")
    i.set_defaults(func=_import_power)


def _run(args: argparse.Namespace) -> int:
    from cgm.vee import run_vee
    from cgm.vee.config import vee_config

    if args.day is None:
        raise CommandError("--day is required (or an action: edit, import-power)")
    url = current_url(get_settings())
    if args.to is not None:
        return _run_days(url, args)
    try:
        config = vee_config(get_settings().vee)
        s = asyncio.run(run_vee(url, args.day, args.run_frontier, config=config))
    except LookupError as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        print(json.dumps(s.as_dict(), indent=2))
        return 0
    print(f"VEE {args.day}: {s.frontiers} frontiers, {s.series} series in {s.seconds:.1f} s")
    print(f"  values     {s.values} ({', '.join(f'{k} {v}' for k, v in s.by_source.items())})")
    if s.by_method:
        print(f"  estimated  {', '.join(f'{k} {v}' for k, v in s.by_method.items())}")
    if s.flagged:
        print(f"  flags      {', '.join(f'{k} {v}' for k, v in sorted(s.flagged.items()))}")
    print(f"  written    {s.written} (kept manual {s.kept_manual})")
    if s.skipped:
        print(f"  skipped    {s.skipped} frontier-days (inputs unchanged since their last run)")
    if s.unsettled:
        print(f"  unsettled  {s.unsettled} (no method could estimate them)")
    if s.alarms:
        print(f"  alarms     {s.alarms} prolonged estimation (see the hoja de vida)")
    return 0


def _run_days(url: str, args: argparse.Namespace) -> int:
    """``--day`` through ``--to``, one run per day, in order."""
    from cgm.progress import Progress
    from cgm.vee import run_vee
    from cgm.vee.config import vee_config

    if args.to < args.day:
        raise CommandError("--to must not be before --day")
    days = [args.day + timedelta(days=i) for i in range((args.to - args.day).days + 1)]
    config = vee_config(get_settings().vee)

    async def go() -> list[tuple[date, object]]:
        out = []
        with Progress("settling days", len(days)) as bar:
            for day in days:
                out.append((day, await run_vee(url, day, args.run_frontier, config=config)))
                bar.advance()
        return out

    try:
        done = asyncio.run(go())
    except LookupError as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        print(json.dumps({d.isoformat(): s.as_dict() for d, s in done}, indent=2))
        return 0
    for d, s in done:
        print(f"VEE {d}: {s.frontiers} frontiers, {s.values} values, written {s.written}, "
              f"unsettled {s.unsettled}")  # fmt: skip
    return 0


def _edit(args: argparse.Namespace) -> int:
    from cgm.vee.edit import EditRefused, edit_settled

    if args.period_start.tzinfo is None:
        raise CommandError("--period-start needs a time zone (e.g. +00:00 or -05:00)")
    url = current_url(get_settings())

    async def go() -> object:
        user = await login_async(url, args)
        async with await psycopg.AsyncConnection.connect(url) as conn:
            return await edit_settled(
                conn,
                frontier=args.frontier,
                channel=args.channel,
                interval_start=args.period_start,
                value=args.value,
                reason=args.reason,
                actor=f"cli:{user.username}",
                level=user.level,
            )

    try:
        stored = asyncio.run(go())
    except (EditRefused, LookupError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    print(
        f"{args.frontier} {args.channel} {args.period_start.isoformat()}: "
        f"{stored.value} (manual, version {stored.version})"
    )  # type: ignore[attr-defined]
    return 0


def _import_power(args: argparse.Namespace) -> int:
    from cgm.vee.power import PowerImportError, import_power, read_csv

    url = current_url(get_settings())

    async def go() -> int:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            return await import_power(conn, read_csv(args.file), source=args.source)

    try:
        n = asyncio.run(go())
    except PowerImportError as exc:
        raise CommandError(str(exc)) from None
    print(f"{n} power samples stored (new or changed)")
    return 0
