"""``cgm user``: the service's own users (two access levels, art. 17).

cgm user add NAME --level {1,2} [--password-env VAR] [--actor WHO]
cgm user scope NAME --frontier CODE ... | --all | --show
cgm user passwd NAME [--password-env VAR] [--actor WHO]
cgm user disable NAME [--actor WHO]   /   cgm user enable NAME [--actor WHO]
cgm user list [--json]
cgm user sync-market --user ADMIN [--asic-user NAME] [--passwords-file FILE]

Passwords come from a prompt (asked twice) or from an environment variable named with
``--password-env``; there is deliberately no ``--password`` argument, because command lines
end up in shell history and in ``ps``.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import psycopg

from cgm.cli import CommandError, secret_from_env
from cgm.commands.cliauth import add_auth_args, login
from cgm.config import get_settings
from cgm.db import current_url
from cgm.security import users

T = TypeVar("T")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("user", help="users of the service and its API (levels 1 and 2)")
    usub = p.add_subparsers(dest="user_command", required=True, metavar="WHAT")
    actor = f"cli:{getpass.getuser()}"

    # No abbreviations: "--password SECRET" must fail, not be taken as "--password-env".
    a = usub.add_parser("add", help="create a user (password prompted twice)", allow_abbrev=False)
    a.add_argument("name")
    a.add_argument(
        "--level", type=int, choices=(1, 2), required=True, help="1: read; 2: read and configure"
    )
    a.add_argument("--password-env", metavar="VAR", help="take the password from $VAR")
    a.add_argument("--actor", default=actor)
    a.set_defaults(func=_add)

    pw = usub.add_parser(
        "passwd", help="set a user's password", allow_abbrev=False
    )
    pw.add_argument("name")
    pw.add_argument("--password-env", metavar="VAR", help="take the password from $VAR")
    pw.add_argument("--actor", default=actor)
    pw.set_defaults(func=_passwd)

    for name, helptext in (("disable", "disable a user"), ("enable", "re-enable a user")):
        d = usub.add_parser(name, help=helptext)
        d.add_argument("name")
        d.add_argument("--actor", default=actor)
        d.set_defaults(func=_disable if name == "disable" else _enable)

    sc = usub.add_parser(
        "scope", help="limit a user to frontiers (their user, network operator, ASIC)"
    )
    sc.add_argument("name")
    which = sc.add_mutually_exclusive_group(required=True)
    which.add_argument("--frontier", nargs="*", metavar="CODE", help="exactly these (none: none)")
    which.add_argument("--all", action="store_true", help="lift the scope: every frontier")
    which.add_argument("--show", action="store_true", help="print the user's scope")
    sc.add_argument("--actor", default=actor)
    sc.set_defaults(func=_scope)

    sm = usub.add_parser(
        "sync-market",
        help="level-1 users for each network operator and the ASIC, scoped from the registry",
    )
    sm.add_argument("--asic-user", default="asic", help="the ASIC user's name (default asic)")
    sm.add_argument("--passwords-file", type=Path, metavar="FILE",
                    help="write new users' generated passwords here (created 0600) instead "
                    "of printing them")  # fmt: skip
    add_auth_args(sm)
    sm.set_defaults(func=_sync_market)

    ls = usub.add_parser("list", help="users, levels, state, last login")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_list)


def _password(args: argparse.Namespace) -> str:
    if args.password_env:
        return secret_from_env(args.password_env, "--password-env")
    first = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("again: ") != first:
        raise CommandError("the passwords do not match")
    return first


def _db(work: Callable[[psycopg.AsyncConnection], Awaitable[T]]) -> T:
    url = current_url(get_settings())

    async def run() -> T:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            try:
                return await work(conn)
            except users.UserError as exc:
                raise CommandError(str(exc)) from None

    return asyncio.run(run())


def _add(args: argparse.Namespace) -> int:
    password = _password(args)
    _db(lambda c: users.add_user(c, args.name, password, args.level, args.actor))
    print(f"user {args.name} added (level {args.level})")
    return 0


def _passwd(args: argparse.Namespace) -> int:
    password = _password(args)
    _db(lambda c: users.set_password(c, args.name, password, args.actor))
    print(f"password of {args.name} changed")
    return 0


def _disable(args: argparse.Namespace) -> int:
    changed = _db(lambda c: users.set_active(c, args.name, False, args.actor))
    print(f"user {args.name} {'disabled' if changed else 'was already disabled'}")
    return 0


def _enable(args: argparse.Namespace) -> int:
    changed = _db(lambda c: users.set_active(c, args.name, True, args.actor))
    print(f"user {args.name} {'enabled' if changed else 'was already enabled'}")
    return 0


def _scope(args: argparse.Namespace) -> int:
    from cgm.security.scope import scope_of, set_scope

    if not args.show:
        codes = None if args.all else list(args.frontier)
        _db(lambda c: set_scope(c, args.name, codes, args.actor))
    codes = _db(lambda c: scope_of(c, args.name))
    print(f"{args.name}: " + ("every frontier" if codes is None else " ".join(codes) or "none"))
    return 0


def _list(args: argparse.Namespace) -> int:
    rows = _db(users.list_users)
    if args.json:
        out = [
            {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in vars(u).items()}
            for u in rows
        ]
        print(json.dumps(out, indent=2))
        return 0
    print(f"{'user':<24} {'level':>5} {'state':<9} {'last login':<25} failures")
    for u in rows:
        state = "active" if u.active else "disabled"
        last = u.last_login_at.isoformat(timespec="seconds") if u.last_login_at else "-"
        print(f"{u.username:<24} {u.level:>5} {state:<9} {last:<25} {u.failed_logins}")
    return 0


def sync_market(url: str, actor: str, asic_user: str, passwords_file: Path | None) -> None:
    """Run :func:`cgm.security.market.sync_market_users` and tell the operator what changed;
    a generated password is shown once (or written to ``passwords_file``), never logged."""
    from cgm.security.market import password_env, sync_market_users

    if passwords_file is not None and passwords_file.exists():
        raise CommandError(f"{passwords_file} exists; give a new file")

    async def run() -> object:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            try:
                return await sync_market_users(conn, actor=actor, asic_user=asic_user)
            except users.UserError as exc:
                raise CommandError(str(exc)) from None

    result = asyncio.run(run())
    generated = {n: p for n, p in result.created.items() if p}  # type: ignore[attr-defined]
    if generated and passwords_file is not None:
        fd = os.open(passwords_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.writelines(f"{name}\t{pw}\n" for name, pw in sorted(generated.items()))
    for name, pw in sorted(result.created.items()):  # type: ignore[attr-defined]
        if pw is None:
            how = f"password from ${password_env(name)}"
        elif passwords_file is not None:
            how = f"password written to {passwords_file}"
        else:
            how = f"password (shown once, give it to its holder): {pw}"
        print(f"market user {name} created, level 1; {how}")
    for name, codes in sorted(result.scopes.items()):  # type: ignore[attr-defined]
        print(f"{name}: {len(codes)} frontier(s)")
    for name in result.emptied:  # type: ignore[attr-defined]
        print(f"{name}: no frontier left in the registry (scope emptied)")


def _sync_market(args: argparse.Namespace) -> int:
    url = current_url(get_settings())
    user = login(url, args)
    sync_market(url, f"cli:{user.username}", args.asic_user, args.passwords_file)
    return 0
