"""Frontier scopes of users (art. 9.1.1.21): the frontier's user, the network operator and
the ASIC see their own frontiers only. The API applies the scope on every read and write
(``cgm.api.app._scope``); unscoped users (the representative's staff) see every frontier."""

from __future__ import annotations

import psycopg

from cgm.security.users import UserError
from cgm.storage.common import set_audit_context


async def set_scope(
    conn: psycopg.AsyncConnection, username: str, codes: list[str] | None, actor: str
) -> None:
    """Scope ``username`` to exactly ``codes`` (an empty list: no frontier), or lift the
    scope (None). Unknown frontier codes are refused, nothing changed."""
    async with conn.transaction():
        await set_audit_context(conn, actor, "user scope")
        cur = await conn.execute("SELECT id FROM app_user WHERE username = %s", (username,))
        row = await cur.fetchone()
        if row is None:
            raise UserError(f"unknown user {username}")
        uid = row[0]
        ids: list[int] = []
        if codes:
            cur = await conn.execute(
                "SELECT id, code FROM frontier WHERE code = ANY(%s)", (list(codes),)
            )
            found = {code: fid for fid, code in await cur.fetchall()}
            missing = sorted(set(codes) - set(found))
            if missing:
                raise UserError(f"unknown frontier(s): {', '.join(missing)}")
            ids = list(found.values())
        await conn.execute(
            "UPDATE app_user SET scoped = %s, updated_at = now() WHERE id = %s",
            (codes is not None, uid),
        )
        await conn.execute(
            "DELETE FROM app_user_frontier WHERE user_id = %s AND NOT frontier_id = ANY(%s)",
            (uid, ids),
        )
        await conn.execute(
            """INSERT INTO app_user_frontier (user_id, frontier_id)
               SELECT %s, unnest(%s::bigint[]) ON CONFLICT DO NOTHING""",
            (uid, ids),
        )


async def scope_of(conn: psycopg.AsyncConnection, username: str) -> list[str] | None:
    """The frontier codes a user is scoped to, or None when unscoped."""
    cur = await conn.execute(
        """SELECT u.scoped, coalesce(array_agg(f.code ORDER BY f.code)
                  FILTER (WHERE f.code IS NOT NULL), '{}')
           FROM app_user u LEFT JOIN app_user_frontier s ON s.user_id = u.id
           LEFT JOIN frontier f ON f.id = s.frontier_id
           WHERE u.username = %s GROUP BY u.scoped""",
        (username,),
    )
    row = await cur.fetchone()
    if row is None:
        raise UserError(f"unknown user {username}")
    return list(row[1]) if row[0] else None
