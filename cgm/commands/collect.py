"""``cgm collect --once [--frontier CODE]``: one collection cycle now, with a summary."""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import timedelta

from cgm.cli import CommandError
from cgm.collection.engine import Collector, CycleSummary, EngineConfig, clock_options
from cgm.collection.session import SessionPolicy
from cgm.config import get_settings
from cgm.db import current_url
from cgm.security import secret_box
from drivers import close_shared


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("collect", help="collect meters now (one cycle)")
    p.add_argument(
        "--once",
        action="store_true",
        required=True,
        help="run one cycle and exit (the service runs cycles hourly)",
    )
    p.add_argument("--frontier", metavar="CODE", help="only this frontier's meters")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per meter call")
    p.add_argument("--concurrency", type=int, default=256, help="sessions at once")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_collect)


def print_summary(s: CycleSummary) -> None:
    failed = ", ".join(f"{k} {v}" for k, v in sorted(s.failed.items())) or "none"
    print(f"cycle {s.cycle.isoformat()}: {s.meters} meters in {s.seconds:.1f} s")
    print(f"  read ok      {s.ok}")
    print(f"  failed       {sum(s.failed.values())} ({failed})")
    if s.skipped_backoff:
        print(f"  backed off   {s.skipped_backoff} (failing repeatedly; --frontier forces)")
    if s.skipped_auth:
        print(f"  locked out   {s.skipped_auth} (level-1 secret refused too often; fix it)")
    print(f"  readings     {s.intervals_stored} stored, {s.intervals_refused} refused")
    print(
        f"  clocks       {s.clocks_corrected} corrected, "
        f"{s.clock_corrections_failed} corrections failed"
    )
    if s.clock_reference:
        print(f"  no clock set {s.clock_reference}")
    if s.config_findings:
        print(f"  config       {s.config_findings} new findings (see the hoja de vida)")
    for error in s.errors:
        print(f"  error        {error}")


def _collect(args: argparse.Namespace) -> int:
    settings = get_settings()
    url = current_url(settings)
    config = EngineConfig(
        max_sessions=args.concurrency,
        policy=SessionPolicy(timeout=args.timeout),
        stale_after=timedelta(seconds=settings.collect_stale_after_s),
        max_wrong_passwords=settings.collect_max_wrong_passwords_per_day,
        **clock_options(settings),
    )
    collector = Collector(url, secret_box(settings), config)
    # On demand for one frontier: the operator asked, so ignore the failure backoff.
    async def once() -> CycleSummary:
        try:
            return await collector.run_cycle(
                frontier=args.frontier, force=args.frontier is not None
            )
        finally:
            await close_shared()

    summary = asyncio.run(once())
    if args.frontier and summary.meters == 0:
        raise CommandError(f"no active meters for frontier {args.frontier}")
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2))
    else:
        print_summary(summary)
    return 0 if not (summary.failed or summary.errors) else 1
