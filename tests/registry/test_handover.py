"""Change of representative: the handover file's round trip, through the CLI and the API of
:mod:`cgm.security.handover`, against the real database and real RSA/AES keys."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cgm import registry
from cgm.cli import main
from cgm.config import Settings, get_settings
from cgm.migrate import upgrade
from cgm.security import secret_box
from cgm.security.handover import HandoverError, decrypt
from tests.registry.conftest import frontier, meter, new_code


@pytest.fixture
def own_db(new_database: Callable[[], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A database of its own: the handover decrypts every stored credential, so none may be
    encrypted with another test's key."""
    url = new_database()
    upgrade(url, Settings(database_url=url))
    monkeypatch.setenv("CGM_DATABASE_URL", url)
    monkeypatch.setenv("CGM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("CGM_SECRET_KEY", raising=False)
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()


@pytest.fixture
def ops(own_db: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("CGM_T_OPS_PW", "ops-password-long-enough")
    assert main(["user", "add", "ops-ana", "--level", "2", "--password-env", "CGM_T_OPS_PW"]) == 0
    return ["--user", "ops-ana", "--password-env", "CGM_T_OPS_PW"]


def _keypair(tmp_path: Path, name: str) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = tmp_path / f"{name}.key.pem"
    public = tmp_path / f"{name}.pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return public, private


def test_export_then_decrypt_gives_back_every_credential(
    ops: list[str],
    own_db: str,
    write_yaml: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = new_code()
    creds = {f"{code}-{r}": (f"read-{r}-{code}", f"write-{r}-{code}") for r in "PB"}
    fr = frontier(
        code,
        meters=[
            meter(
                serial,
                role,
                credentials={"level1": {"secret": l1, "client": "16"}, "level2": {"secret": l2}},
            )
            for (serial, (l1, l2)), role in zip(creds.items(), ("principal", "backup"), strict=True)
        ],
    )
    box = secret_box(get_settings())
    with psycopg.connect(own_db) as conn:
        registry.import_inventory(conn, registry.load(write_yaml(fr)), box, actor="pytest")
        conn.execute(
            """INSERT INTO frontier_log (frontier_id, actor, kind, purpose)
               SELECT id, 'api:ana', 'level2_access', 'meter replaced' FROM frontier
               WHERE code = %s""",
            (code,),
        )
    public, private = _keypair(tmp_path, "incoming")
    out = tmp_path / "handover.json"
    assert (
        main(["handover", "export", "--recipient-key", str(public), "--out", str(out), *ops]) == 0
    )
    assert out.stat().st_mode & 0o077 == 0
    text = out.read_text()
    for l1, l2 in creds.values():
        assert l1 not in text and l2 not in text  # only inside the envelope
    doc = json.loads(text)
    assert doc["format"] == "cgm-handover/1" and doc["exported_by"] == f"cli:{ops[1]}"
    assert {"username": ops[1], "level": 2} in [
        {"username": u["username"], "level": u["level"]} for u in doc["users"]
    ]
    mine = [m for m in doc["meter_access"] if m["frontier"] == code]
    assert {m["serial"] for m in mine} == set(creds)
    assert all(m["secrets_registered"] == [1, 2] and m["people"] for m in mine)
    assert {"frontier": code, "actor": "api:ana", "purpose": "meter replaced"}.items() <= next(
        e for e in doc["level2_log"] if e["frontier"] == code
    ).items()

    capsys.readouterr()
    assert main(["handover", "decrypt", str(out), "--key", str(private)]) == 0
    clear = json.loads(capsys.readouterr().out)
    got = {(c["serial"], c["level"]): c["secret"] for c in clear if c["frontier"] == code}
    want = {(s, lv): pw for s, pair in creds.items() for lv, pw in zip((1, 2), pair, strict=True)}
    assert got == want

    # The export itself is a level-2 access in every frontier's hoja de vida.
    with psycopg.connect(own_db) as conn:
        (n,) = conn.execute(
            """SELECT count(*) FROM frontier_log l JOIN frontier f ON f.id = l.frontier_id
               WHERE f.code = %s AND l.kind = 'level2_access' AND l.actor = %s""",
            (code, f"cli:{ops[1]}"),
        ).fetchone()
    assert n == 1

    # Another key, or an altered file, gives nothing.
    _, other = _keypair(tmp_path, "other")
    with pytest.raises(HandoverError, match="another key"):
        decrypt(doc, other.read_bytes())
    ct = bytearray(base64.b64decode(doc["credentials"]["ciphertext"]))
    ct[0] ^= 1
    doc["credentials"]["ciphertext"] = base64.b64encode(bytes(ct)).decode()
    with pytest.raises(HandoverError, match="altered"):
        decrypt(doc, private.read_bytes())
    assert main(["handover", "decrypt", str(out), "--key", str(other)]) == 2


def test_export_refuses_a_weak_or_missing_key(
    ops: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    pem = tmp_path / "weak.pem"
    pem.write_bytes(
        weak.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    out = tmp_path / "h.json"
    assert main(["handover", "export", "--recipient-key", str(pem), "--out", str(out), *ops]) == 2
    assert "at least 2048 bits" in capsys.readouterr().err and not out.exists()
