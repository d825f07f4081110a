"""``cgm db upgrade``: create or upgrade the schema."""

from __future__ import annotations

import argparse
import sys

from cgm.config import get_settings
from cgm.db import database_url
from cgm.migrate import upgrade


def register(sub: argparse._SubParsersAction) -> None:
    db = sub.add_parser("db", help="database schema")
    dbsub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    up = dbsub.add_parser("upgrade", help="create or upgrade the schema (idempotent)")
    up.set_defaults(func=_upgrade)


def _upgrade(args: argparse.Namespace) -> int:
    settings = get_settings()
    result = upgrade(database_url(settings), settings)
    if result.warning:
        print(f"warning: {result.warning}", file=sys.stderr)
    print(f"applied: {', '.join(result.applied) or 'nothing (up to date)'}")
    if result.skipped:
        print(f"waiting for TimescaleDB: {', '.join(result.skipped)}")
    print(f"timescaledb: {'enabled' if result.timescale else 'not available (plain PostgreSQL)'}")
    return 0
