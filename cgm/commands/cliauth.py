"""Authenticating the person behind a CLI write, as the API does (art. 17).

Every command that changes the registry, a report or a credential takes ``--user`` and
the password (prompted, or ``--password-env VAR`` for automation; never an argument, which
would land in shell history and ``ps``). The actor recorded is ``cli:<user>``.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass

import psycopg

from cgm.cli import CommandError, secret_from_env
from cgm.security.users import AuthFailed, User, authenticate


def add_auth_args(parser: argparse.ArgumentParser, level: int = 2) -> None:
    parser.add_argument("--user", required=True, help=f"a cgm user of level {level} (cgm user add)")
    parser.add_argument(
        "--password-env", metavar="VAR", help="read the password from $VAR instead of a prompt"
    )


def password(args: argparse.Namespace) -> str:
    if args.password_env:
        return secret_from_env(args.password_env, "--password-env")
    return getpass.getpass(f"password for {args.user}: ")


async def login_async(url: str, args: argparse.Namespace, level: int = 2) -> User:
    """The authenticated user, of at least ``level``; CommandError otherwise."""
    pw = password(args)
    async with await psycopg.AsyncConnection.connect(url) as conn:
        try:
            user = await authenticate(conn, args.user, pw)
        except AuthFailed:
            await conn.commit()  # keep the failed-login count
            raise CommandError(f"user {args.user}: wrong password, unknown or disabled") from None
        await conn.commit()
    if user.level < level:
        raise CommandError(f"user {user.username} is level {user.level}; this needs level {level}")
    return user


def login(url: str, args: argparse.Namespace, level: int = 2) -> User:
    return asyncio.run(login_async(url, args, level))
