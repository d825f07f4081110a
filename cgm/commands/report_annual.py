"""``cgm report annual`` (art. 9.1.1.39) and ``cgm report asic-month`` (XM's monthly items)."""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, date, datetime
from pathlib import Path

import psycopg

from cgm.cli import CommandError
from cgm.config import get_settings
from cgm.db import current_url


def register(rsub: argparse._SubParsersAction) -> None:
    a = rsub.add_parser("annual", help="the annual CGM report (art. 9.1.1.39) for a year")
    a.add_argument("--year", type=int, required=True)
    a.add_argument("--out", type=Path, help="write the JSON here instead of stdout")
    a.set_defaults(func=_annual)
    m = rsub.add_parser("asic-month", help="XM's monthly items (ReadingCount 1) as XML")
    m.add_argument("--month", required=True, help="YYYY-MM")
    m.add_argument("--frontier", action="append", metavar="CODE", help="only these frontiers")
    m.add_argument("--out", type=Path, required=True, help="the XML message to write")
    m.set_defaults(func=_month)


def _annual(args: argparse.Namespace) -> int:
    from cgm.reporting.annual import annual_report

    settings = get_settings()

    async def go() -> dict:
        async with await psycopg.AsyncConnection.connect(current_url(settings)) as conn:
            return await annual_report(conn, args.year, cgm_code=settings.cgm_code,
                                       now=datetime.now(UTC))  # fmt: skip

    text = json.dumps(asyncio.run(go()), ensure_ascii=False, indent=2)
    if args.out:
        args.out.write_text(text)
        print(f"{args.out} written")
    else:
        print(text)
    return 0


def _month(args: argparse.Namespace) -> int:
    from cgm.reporting.asic.monthly import build_month
    from cgm.reporting.asic.xm_xml import message

    try:
        month = date.fromisoformat(args.month + "-01")
    except ValueError:
        raise CommandError(f"--month {args.month!r}: expected YYYY-MM") from None
    url = current_url(get_settings())

    async def go() -> tuple:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            return await build_month(conn, month, args.frontier)

    items, why = asyncio.run(go())
    args.out.write_bytes(message(items))
    print(f"{args.out}: {len(items)} items")
    for code, reason in sorted(why.items()):
        print(f"  not ready  {code}: {reason}")
    return 0
