"""The ``cgm`` command. Each area adds its own sub-commands through ``register(subparsers)``
in its ``cli`` module, listed in ``COMMAND_MODULES``; this file only wires them."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from importlib import import_module

COMMAND_MODULES = [
    "cgm.commands.db",
    "cgm.commands.registry",
    "cgm.commands.run",
    "cgm.commands.probe",
    "cgm.commands.simulate",
    "cgm.commands.collect",
    "cgm.commands.vee",
    "cgm.commands.report",
    "cgm.commands.user",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cgm", description="Centro de Gestión de Medidas")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    import psycopg

    from cgm.db import SchemaBehind
    from cgm.migrate import MigrationError

    try:
        return int(args.func(args) or 0)
    except (CommandError, SchemaBehind, MigrationError) as exc:
        print(f"cgm: error: {exc}", file=sys.stderr)
        return 2
    except psycopg.OperationalError as exc:  # server unreachable, restarted, refused
        print(f"cgm: error: database: {str(exc).strip()}", file=sys.stderr)
        return 2


class CommandError(Exception):
    """A user-facing failure: printed as one clear line, exit status 2."""


if __name__ == "__main__":
    sys.exit(main())
