"""``cgm report annual`` (art. 9.1.1.39) and ``cgm report asic-month`` (XM's monthly items)."""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psycopg

from cgm.cli import CommandError
from cgm.config import get_settings
from cgm.db import current_url


def register(rsub: argparse._SubParsersAction) -> None:
    a = rsub.add_parser("annual", help="the annual CGM report (art. 9.1.1.39) for a year")
    a.add_argument("--year", type=int, required=True)
    a.add_argument("--out", type=Path, help="write the JSON here instead of stdout")
    a.set_defaults(func=_annual)
    m = rsub.add_parser("asic-month", help="XM's monthly items (ReadingCount 1): write or send")
    m.add_argument("--month", required=True, help="YYYY-MM")
    m.add_argument("--frontier", action="append", metavar="CODE", help="only these frontiers")
    what = m.add_mutually_exclusive_group(required=True)
    what.add_argument("--out", type=Path, help="write the XML message (any frontier given)")
    what.add_argument("--send", action="store_true",
                      help="send the month of the frontiers reported monthly to the ASIC, as "
                      "the monthly job does (each version once)")  # fmt: skip
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
    settings = get_settings()
    url = current_url(settings)
    if args.send:
        return _send_month(settings, url, month, args.frontier)

    async def go() -> tuple:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            return await build_month(conn, month, args.frontier)

    items, why = asyncio.run(go())
    args.out.write_bytes(message(items))
    print(f"{args.out}: {len(items)} items")
    for code, reason in sorted(why.items()):
        print(f"  not ready  {code}: {reason}")
    return 0


def _send_month(settings: Any, url: str, month: date, frontiers: list[str] | None) -> int:
    from cgm.reporting.asic.delivery import AsicReporter, NotConfigured, transport_from_settings

    try:
        transport = transport_from_settings(settings)
    except NotConfigured as exc:
        raise CommandError(str(exc)) from None

    async def go() -> Any:
        try:
            return await AsicReporter(url, settings, transport).report_month(month, frontiers)
        finally:
            await transport.aclose()

    result = asyncio.run(go())
    print(json.dumps(result.as_dict(), ensure_ascii=False, indent=2))
    return 1 if result.failed or result.rejected else 0
