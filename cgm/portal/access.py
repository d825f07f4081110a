"""Unit-scoped users: ordinary level-1 users of the service (same passwords, same API
authentication) tied to one portal unit, so a unit's token sees only its own meters."""

from __future__ import annotations

import psycopg

from cgm.portal.store import PortalError, _unit_id
from cgm.security import users


async def add_unit_user(
    conn: psycopg.AsyncConnection, username: str, password: str, unit: str, actor: str
) -> users.User:
    uid = await _unit_id(conn, unit)
    await conn.commit()
    user = await users.add_user(conn, username, password, 1, actor)
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO portal_unit_user (user_id, unit_id) VALUES (%s, %s)", (user.id, uid)
        )
    return user


async def unit_of(conn: psycopg.AsyncConnection, user: users.User) -> int | None:
    """The unit a user acts for, or None for a service user (sees every meter)."""
    cur = await conn.execute("SELECT unit_id FROM portal_unit_user WHERE user_id = %s", (user.id,))
    row = await cur.fetchone()
    return row[0] if row else None


__all__ = ["PortalError", "add_unit_user", "unit_of"]
