"""The service's own users: two access levels with a password each (art. 17).

Level 1 reads (identification, measurements, parameters); level 2 also changes things. Only
an argon2id hash is stored (``app_user_password``, kept apart from ``app_user`` so the audit
trigger on ``app_user`` never copies a hash into ``audit_log``). A hash made with older
parameters is replaced on the next successful login, so raising the cost needs no migration.

Failed logins never lock an account (that would let anyone keep a user out): the API slows
down whoever fails, per client and user (``cgm.security.throttle``). Nothing here logs a password or
a hash; the reason an authentication failed is for the server log, never for the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from psycopg_pool import AsyncConnectionPool

from cgm.storage.common import set_audit_context

log = logging.getLogger(__name__)

HASHER = PasswordHasher()  # argon2id, RFC 9106 low-memory profile (argon2-cffi defaults)
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024  # argon2 is happy with more; a bound keeps requests cheap
# argon2 runs on its own threads, as many as the machine has cores: a flood of logins
# waits there instead of taking the threads and connections everything else uses.
_HASHING = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="argon2")
T = TypeVar("T")
USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")

# HTTP Basic sends the password with every request and argon2 costs a quarter of a second:
# a password verified recently is remembered, in this process's memory only, as a keyed
# digest bound to the stored hash. A changed password (new hash), a disabled or locked
# account is still caught on every request, since the row is read each time.
VERIFIED_TTL_S = 300.0
_VERIFIED_MAX = 1024
_verified: dict[bytes, float] = {}
_CACHE_KEY = os.urandom(32)


def _verified_key(stored_hash: str, password: str) -> bytes:
    return hmac.new(_CACHE_KEY, f"{stored_hash}\0{password}".encode(), hashlib.sha256).digest()


# Verified against when the user does not exist, so an unknown name costs as much as a
# wrong password and response times do not reveal which names exist.
_DUMMY_HASH = HASHER.hash("cgm-dummy-password-for-timing")


class UserError(ValueError):
    """A user change that cannot be made (unknown user, weak password, duplicate name)."""


class AuthFailed(Exception):
    """Authentication refused. ``why`` is for the server log only; clients get one answer."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


@dataclass(frozen=True)
class User:
    id: int
    username: str
    level: int
    active: bool


@dataclass(frozen=True)
class UserInfo:
    username: str
    level: int
    active: bool
    created_at: datetime
    updated_at: datetime
    password_changed_at: datetime
    last_login_at: datetime | None
    failed_logins: int
    locked_until: datetime | None


def check_password(password: str, username: str) -> None:
    """Refuse passwords that are too short, too long or the user name itself."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise UserError(f"the password must have at most {MAX_PASSWORD_LENGTH} characters")
    if password.strip().lower() == username.lower():
        raise UserError("the password must not be the user name")


def _check_level(level: int) -> None:
    if level not in (1, 2):
        raise UserError("level must be 1 (read) or 2 (configure)")


async def add_user(
    conn: psycopg.AsyncConnection, username: str, password: str, level: int, actor: str
) -> User:
    """Create a user; the change is audited (app_user_audit) with ``actor``."""
    if not USERNAME.match(username):
        raise UserError(
            "a user name is 1–64 letters, digits or . _ @ -, starting with a letter or digit"
        )
    _check_level(level)
    check_password(password, username)
    hashed = await _hashing(HASHER.hash, password)
    async with conn.transaction():
        await set_audit_context(conn, actor, f"user add (level {level})")
        cur = await conn.execute(
            """INSERT INTO app_user (username, level) VALUES (%s, %s)
               ON CONFLICT (username) DO NOTHING RETURNING id""",
            (username, level),
        )
        row = await cur.fetchone()
        if row is None:
            raise UserError(f"user {username} already exists")
        await conn.execute(
            "INSERT INTO app_user_password (user_id, hash) VALUES (%s, %s)", (row[0], hashed)
        )
    return User(row[0], username, level, True)


async def set_password(
    conn: psycopg.AsyncConnection, username: str, password: str, actor: str
) -> None:
    """Replace a user's password and clear any lockout (audited, without the hash)."""
    check_password(password, username)
    hashed = await _hashing(HASHER.hash, password)
    async with conn.transaction():
        await set_audit_context(conn, actor, "user passwd")
        uid = await _touch(conn, username, "password_changed_at = now()")
        await conn.execute(
            """UPDATE app_user_password
               SET hash = %s, failed_logins = 0, locked_until = NULL WHERE user_id = %s""",
            (hashed, uid),
        )


async def set_active(
    conn: psycopg.AsyncConnection, username: str, active: bool, actor: str
) -> bool:
    """Disable (or re-enable) a user; False if it already was. Users are never deleted, so
    the audit log and api_access keep naming someone who existed."""
    async with conn.transaction():
        await set_audit_context(conn, actor, "user enable" if active else "user disable")
        cur = await conn.execute("SELECT active FROM app_user WHERE username = %s", (username,))
        row = await cur.fetchone()
        if row is None:
            raise UserError(f"unknown user {username}")
        if row[0] == active:
            return False
        await _touch(conn, username, "active = true" if active else "active = false")
    return True


async def _touch(conn: psycopg.AsyncConnection, username: str, assignment: str) -> int:
    # ``assignment`` is one of the fixed strings above, never user input.
    cur = await conn.execute(
        f"UPDATE app_user SET {assignment}, updated_at = now() WHERE username = %s RETURNING id",
        (username,),
    )
    row = await cur.fetchone()
    if row is None:
        raise UserError(f"unknown user {username}")
    return row[0]


async def list_users(conn: psycopg.AsyncConnection) -> list[UserInfo]:
    cur = await conn.execute(
        """SELECT u.username, u.level, u.active, u.created_at, u.updated_at,
                  u.password_changed_at, p.last_login_at, p.failed_logins, p.locked_until
           FROM app_user u JOIN app_user_password p ON p.user_id = u.id ORDER BY u.username"""
    )
    return [UserInfo(*r) for r in await cur.fetchall()]


def _verify(hashed: str, password: str) -> bool:
    try:
        return HASHER.verify(hashed, password)
    except VerifyMismatchError:
        return False
    except (VerificationError, InvalidHashError):
        log.error("a stored password hash could not be verified (corrupt or unsupported)")
        return False


async def _hashing(fn: Callable[..., T], *args: object) -> T:
    """Run an argon2 call on the hashing threads: a flood of logins queues there, and
    never takes the threads or the connections that everything else uses."""
    return await asyncio.get_running_loop().run_in_executor(_HASHING, fn, *args)


ConnectionSource = psycopg.AsyncConnection | AsyncConnectionPool


@contextlib.asynccontextmanager
async def _connection(source: ConnectionSource) -> AsyncIterator[psycopg.AsyncConnection]:
    if isinstance(source, AsyncConnectionPool):
        async with source.connection() as conn:
            yield conn
    else:
        yield source


async def authenticate(source: ConnectionSource, username: str, password: str) -> User:
    """The active user with this password, or :class:`AuthFailed`.

    ``source`` is a connection or a pool; with a pool, a connection is taken only for the
    short queries before and after the password check, never while argon2 runs (so a flood
    of logins cannot exhaust the pool). Failures are counted on the user's row for the
    operator to see, but never lock the account: whoever fails is slowed down instead
    (``cgm.security.throttle``, applied by the API per client). A success resets the count
    and rehashes an outdated hash.
    """
    if not password or len(password) > MAX_PASSWORD_LENGTH:
        raise AuthFailed("empty or oversized password")
    if not USERNAME.match(username):
        await _hashing(_verify, _DUMMY_HASH, password)
        raise AuthFailed("malformed user name")
    async with _connection(source) as conn:
        cur = await conn.execute(
            """SELECT u.id, u.level, u.active, p.hash
               FROM app_user u JOIN app_user_password p ON p.user_id = u.id
               WHERE u.username = %s""",
            (username,),
        )
        row = await cur.fetchone()
    if row is None:
        await _hashing(_verify, _DUMMY_HASH, password)
        raise AuthFailed(f"unknown user {username!r}")
    uid, level, active, hashed = row
    key = _verified_key(hashed, password)
    if active and _verified.get(key, 0.0) > time.monotonic():
        return User(uid, username, level, active)
    ok = await _hashing(_verify, hashed, password)
    if not ok:
        async with _connection(source) as conn:
            await conn.execute(
                """UPDATE app_user_password
                   SET failed_logins = failed_logins + 1, last_failed_at = now()
                   WHERE user_id = %s""",
                (uid,),
            )
        raise AuthFailed(f"wrong password for {username!r}")
    if not active:
        raise AuthFailed(f"user {username!r} is disabled")
    new_hash = None
    if HASHER.check_needs_rehash(hashed):
        new_hash = await _hashing(HASHER.hash, password)
    async with _connection(source) as conn:
        await conn.execute(
            """UPDATE app_user_password
               SET failed_logins = 0, locked_until = NULL, last_login_at = now(),
                   hash = coalesce(%s, hash)
               WHERE user_id = %s""",
            (new_hash, uid),
        )
    if len(_verified) >= _VERIFIED_MAX:
        _verified.clear()
    _verified[_verified_key(new_hash or hashed, password)] = time.monotonic() + VERIFIED_TTL_S
    return User(uid, username, level, active)
