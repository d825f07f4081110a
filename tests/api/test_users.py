"""The service's users: argon2 hashes, levels, no lock-out, audit without hashes, the CLI."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest
from argon2 import PasswordHasher

from cgm import cli
from cgm.config import get_settings
from cgm.security import users
from tests.api.conftest import PASSWORD, make_user


async def _conn(db_url: str) -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(db_url, autocommit=True)


async def _stored_hash(conn: psycopg.AsyncConnection, name: str) -> str:
    cur = await conn.execute(
        """SELECT p.hash FROM app_user_password p JOIN app_user u ON u.id = p.user_id
           WHERE u.username = %s""",
        (name,),
    )
    return (await cur.fetchone())[0]


async def test_password_is_hashed_and_verified(db_url: str) -> None:
    name, pw = await make_user(db_url, 1)
    async with await _conn(db_url) as conn:
        stored = await _stored_hash(conn, name)
        assert stored.startswith("$argon2id$") and pw not in stored
        user = await users.authenticate(conn, name, pw)
        assert (user.username, user.level, user.active) == (name, 1, True)
        with pytest.raises(users.AuthFailed):
            await users.authenticate(conn, name, pw + "x")
        with pytest.raises(users.AuthFailed):
            await users.authenticate(conn, "nobody-" + name, pw)


async def test_weak_passwords_and_bad_names_refused(db_url: str) -> None:
    async with await _conn(db_url) as conn:
        with pytest.raises(users.UserError, match="at least"):
            await users.add_user(conn, "shorty", "short", 1, actor="test")
        with pytest.raises(users.UserError, match="user name"):
            await users.add_user(conn, "samename12345", "samename12345", 1, actor="test")
        with pytest.raises(users.UserError, match="user name is"):
            await users.add_user(conn, "bad name; drop", PASSWORD, 1, actor="test")
        with pytest.raises(users.UserError, match="level"):
            await users.add_user(conn, "levelthree", PASSWORD, 3, actor="test")
        name, _ = await make_user(db_url, 1)
        with pytest.raises(users.UserError, match="already exists"):
            await users.add_user(conn, name, PASSWORD, 2, actor="test")


async def test_disabled_user_refused_even_with_right_password(db_url: str) -> None:
    name, pw = await make_user(db_url, 2, active=False)
    async with await _conn(db_url) as conn:
        with pytest.raises(users.AuthFailed, match="disabled"):
            await users.authenticate(conn, name, pw)
        assert await users.set_active(conn, name, True, actor="test")
        assert (await users.authenticate(conn, name, pw)).level == 2


async def test_outdated_hash_is_replaced_on_login(db_url: str, monkeypatch) -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)
    monkeypatch.setattr(users, "HASHER", weak)
    name, pw = await make_user(db_url, 1)
    monkeypatch.undo()
    async with await _conn(db_url) as conn:
        before = await _stored_hash(conn, name)
        assert users.HASHER.check_needs_rehash(before)
        await users.authenticate(conn, name, pw)
        after = await _stored_hash(conn, name)
        assert after != before and not users.HASHER.check_needs_rehash(after)
        users.HASHER.verify(after, pw)


async def test_failed_logins_are_counted_but_never_lock_the_account(db_url: str) -> None:
    name, pw = await make_user(db_url, 1)
    async with await _conn(db_url) as conn:
        for _ in range(8):
            with pytest.raises(users.AuthFailed, match="wrong password"):
                await users.authenticate(conn, name, "not the password at all")
        info = next(u for u in await users.list_users(conn) if u.username == name)
        assert info.failed_logins == 8  # visible to the operator (cgm user list)
        await users.authenticate(conn, name, pw)  # the right password still works
        info = next(u for u in await users.list_users(conn) if u.username == name)
        assert info.failed_logins == 0 and info.last_login_at is not None


async def test_changed_password_invalidates_the_old_one(db_url: str) -> None:
    name, pw = await make_user(db_url, 1)
    async with await _conn(db_url) as conn:
        await users.authenticate(conn, name, pw)  # now remembered as verified
        await users.set_password(conn, name, "another long password", actor="test")
        with pytest.raises(users.AuthFailed):
            await users.authenticate(conn, name, pw)
        await users.authenticate(conn, name, "another long password")


async def test_user_changes_audited_without_hash(db_url: str) -> None:
    name, _ = await make_user(db_url, 1)
    async with await _conn(db_url) as conn:
        await users.set_password(conn, name, "yet another long password", actor="ops:ana")
        await users.set_active(conn, name, False, actor="ops:ana")
        cur = await conn.execute(
            """SELECT op, actor, reason, old_row, new_row FROM audit_log
               WHERE table_name = 'app_user' AND new_row ->> 'username' = %s ORDER BY id""",
            (name,),
        )
        rows = await cur.fetchall()
        cur = await conn.execute(
            """SELECT count(*) FROM audit_log
               WHERE coalesce(new_row, old_row)::text LIKE '%argon2%'"""
        )
        (with_hash,) = await cur.fetchone()
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("I", "test", "user add (level 1)"),
        ("U", "ops:ana", "user passwd"),
        ("U", "ops:ana", "user disable"),
    ]
    assert rows[1][3]["password_changed_at"] != rows[1][4]["password_changed_at"]
    assert rows[2][4]["active"] is False
    assert with_hash == 0


def test_cli_user_commands(db_url: str, monkeypatch, capsys) -> None:
    monkeypatch.setenv("CGM_DATABASE_URL", db_url)
    monkeypatch.setenv("CGM_TEST_PW", PASSWORD)
    get_settings.cache_clear()
    name = f"cli{uuid.uuid4().hex[:8]}"
    try:
        assert cli.main(["user", "add", name, "--level", "2", "--password-env", "CGM_TEST_PW"]) == 0
        assert cli.main(["user", "add", name, "--level", "1", "--password-env", "CGM_TEST_PW"]) == 2
        assert "already exists" in capsys.readouterr().err
        assert cli.main(["user", "add", "x" + name, "--level", "1", "--password-env", "NOPE"]) == 2
        # Prompted twice; a mismatch changes nothing.
        answers = iter(["first long password", "second long password"])
        monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
        assert cli.main(["user", "passwd", name]) == 2
        assert "do not match" in capsys.readouterr().err
        answers = iter(["brand new password", "brand new password"])
        assert cli.main(["user", "passwd", name]) == 0
        assert cli.main(["user", "disable", name]) == 0
        capsys.readouterr()
        assert cli.main(["user", "list", "--json"]) == 0
        listed = {u["username"]: u for u in json.loads(capsys.readouterr().out)}
        assert listed[name]["level"] == 2 and listed[name]["active"] is False
        assert "hash" not in listed[name]
        with pytest.raises(SystemExit):  # there is no --password argument, by design
            cli.main(["user", "add", "y" + name, "--level", "1", "--password", "x" * 20])
    finally:
        get_settings.cache_clear()
