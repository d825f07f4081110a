"""``cgm run``: the main job."""

from __future__ import annotations

import argparse
import asyncio

from cgm.config import get_settings
from cgm.service import Service


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run the CGM service until stopped")
    run.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    asyncio.run(Service(get_settings()).run())
    return 0
