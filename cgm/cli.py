"""The ``cgm`` command. Each area adds its own sub-commands through ``register(subparsers)``
in its ``cli`` module, listed in ``COMMAND_MODULES``; this file only wires them."""

from __future__ import annotations

import argparse
import logging
import os
import re
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
    "cgm.commands.audit",
    "cgm.commands.failure",
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


def secret_from_env(name: str, flag: str) -> str:
    """The secret in environment variable ``name`` (given with ``flag``), never echoed.

    Secrets come by variable name, not on the command line, because command lines end up in
    shell history and ``ps``. A value mistyped into ``flag`` is not printed back.
    """
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise CommandError(f"{flag} takes the NAME of an environment variable")
    value = os.environ.get(name)
    if not value:
        raise CommandError(f"environment variable {name} is not set or empty")
    return value


if __name__ == "__main__":
    sys.exit(main())
