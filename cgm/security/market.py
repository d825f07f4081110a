"""Market users from the registry (art. 9.1.1.21): the network operator (OR) and the ASIC
have level-1 access to the measurements of their frontiers.

:func:`sync_market_users` makes the users follow the registry: one level-1 user per network
operator named in the registry (``or.<OR>``), scoped to exactly the frontiers whose
``network_operator`` it is, and one ASIC user scoped to every reported frontier (every
frontier with an active meter: the ones the ASIC report covers). Run again after each
import, it adds the frontiers that appeared and drops those that left; an OR no longer in the
registry keeps its user with an empty scope (it sees nothing; disable it with ``cgm user
disable``). Such users are marked in ``app_user.market_role`` so they are found again
whatever else changes; a user of the same name that is not a market user, or a market user
raised to level 2, is an error (nothing changed).

Passwords: a new user's password is taken from ``CGM_MARKET_PASSWORD_<NAME>`` (the name in
upper case, other characters as ``_``) when set; otherwise one is generated and returned to
the caller, once, for the operator creating the user. It is stored as an argon2 hash only,
like every password (``cgm.security.users``); existing users' passwords are never touched.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass, field

import psycopg

from cgm.security.scope import set_scope
from cgm.security.users import UserError, add_user
from cgm.storage.common import set_audit_context

ASIC_ROLE = "asic"
OPERATOR_ROLE = "network_operator:"
DEFAULT_ASIC_USER = "asic"


def operator_user(operator: str) -> str:
    return f"or.{operator}"


def password_env(username: str) -> str:
    return "CGM_MARKET_PASSWORD_" + re.sub(r"[^A-Z0-9]", "_", username.upper())


@dataclass
class MarketSync:
    created: dict[str, str | None] = field(default_factory=dict)  # user → generated password
    scopes: dict[str, list[str]] = field(default_factory=dict)  # user → frontiers now
    emptied: list[str] = field(default_factory=list)  # market users left without frontiers


async def sync_market_users(
    conn: psycopg.AsyncConnection, *, actor: str, asic_user: str = DEFAULT_ASIC_USER
) -> MarketSync:
    """Create or update the OR and ASIC users to match the registry, in one transaction."""
    out = MarketSync()
    async with conn.transaction():
        cur = await conn.execute(
            """SELECT network_operator, array_agg(code ORDER BY code) FROM frontier
               WHERE network_operator IS NOT NULL GROUP BY network_operator"""
        )
        wanted: dict[str, tuple[str, list[str]]] = {
            OPERATOR_ROLE + op: (operator_user(op), list(codes))
            for op, codes in await cur.fetchall()
        }
        cur = await conn.execute(
            """SELECT coalesce(array_agg(f.code ORDER BY f.code), '{}') FROM frontier f
               WHERE EXISTS (SELECT 1 FROM meter m WHERE m.frontier_id = f.id AND m.active)"""
        )
        wanted[ASIC_ROLE] = (asic_user, list((await cur.fetchone())[0]))  # type: ignore[index]
        cur = await conn.execute(
            "SELECT market_role, username, level FROM app_user WHERE market_role IS NOT NULL"
        )
        existing = {role: (name, level) for role, name, level in await cur.fetchall()}
        for role, (name, codes) in sorted(wanted.items()):
            if role in existing:
                name, level = existing[role]
                if level != 1:
                    raise UserError(f"market user {name} has level {level}; it must be 1")
            else:
                cur = await conn.execute(
                    "SELECT market_role FROM app_user WHERE username = %s", (name,)
                )
                if await cur.fetchone() is not None:
                    raise UserError(f"user {name} exists and is not the {role} market user; "
                                    "rename it or choose another name")  # fmt: skip
                given = os.environ.get(password_env(name))
                password = given or secrets.token_urlsafe(24)
                await add_user(conn, name, password, 1, actor)
                await set_audit_context(conn, actor, f"market user {role}")
                await conn.execute(
                    "UPDATE app_user SET market_role = %s, updated_at = now() "
                    "WHERE username = %s", (role, name),
                )  # fmt: skip
                out.created[name] = None if given else password
            await set_scope(conn, name, codes, actor)
            out.scopes[name] = codes
        for role, (name, _) in sorted(existing.items()):
            if role not in wanted:
                await set_scope(conn, name, [], actor)
                out.scopes[name] = []
                out.emptied.append(name)
    return out
