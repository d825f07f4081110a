"""The ``cgm`` command. Each area adds its own sub-commands through ``register(subparsers)``
in its ``cli`` module, listed in ``COMMAND_MODULES``; this file only wires them."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Sequence
from importlib import import_module, metadata
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from pydantic import ValidationError

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
    "cgm.commands.hoja",
    "cgm.commands.portal",
    "cgm.commands.handover",
]


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error of every other user error (``cgm: error: …``,
    exit 2) instead of a usage block; sub-command parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        where = self.prog.removeprefix("cgm").strip()
        hint = f" (see `{self.prog} --help`)"
        self.exit(2, f"cgm: error: {where + ': ' if where else ''}{message}{hint}\n")


def _version() -> str:
    try:
        return metadata.version("cgm")
    except metadata.PackageNotFoundError:  # running from a source tree, not installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cgm", description="Centro de Gestión de Medidas")
    parser.add_argument("--version", action="version", version=f"cgm {_version()}")
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
    from pydantic import ValidationError

    from cgm.config import PortTaken
    from cgm.db import SchemaBehind
    from cgm.migrate import MigrationError

    try:
        return int(args.func(args) or 0)
    except (CommandError, SchemaBehind, MigrationError, PortTaken) as exc:
        # Kept as written: an inventory's problems are one `file:line: …` line each.
        print(f"cgm: error: {exc}", file=sys.stderr)
        return 2
    except psycopg.OperationalError as exc:  # server unreachable, restarted, refused
        return _fail(f"database: {_one_line(str(exc))}")
    except ValidationError as exc:  # settings: CGM_* variables or the TOML file
        return _fail(f"settings: {settings_problems(exc)}")
    except KeyboardInterrupt:
        print("cgm: interrupted", file=sys.stderr)
        return 130


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _fail(message: str) -> int:
    print(f"cgm: error: {_one_line(message)}", file=sys.stderr)
    return 2


def settings_problems(exc: ValidationError) -> str:
    """Which setting is wrong and why, never its value (a database URL holds a password)."""
    return "; ".join(
        f"{'CGM_' + '_'.join(str(p) for p in e['loc']).upper() if e['loc'] else 'settings'}: "
        f"{str(e['msg']).removeprefix('Value error, ')}"
        for e in exc.errors(include_input=False, include_url=False)
    )


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
    # As ``python -m cgm.cli`` this file is ``__main__``, a second copy of the module whose
    # CommandError is not the one the commands raise: run the imported module's main.
    from cgm.cli import main as _main

    sys.exit(_main())
