"""Handing the CGM over to an incoming frontier representative (art. 9.1.1.16).

One file holds what the incoming representative needs to go on at once: the users and
their levels, who has access to each meter, the level-2 log (every level-2 access in the
hoja de vida), and the meter credentials — the only secret part, encrypted for the
incoming representative's RSA public key, so the file can travel by any channel.

Format ``cgm-handover/1`` (JSON, UTF-8):

- ``users``, ``meter_access``, ``level2_log``: clear JSON (no secret, no password hash:
  passwords are personal and are set anew by whoever keeps each account);
- ``credentials``: an envelope. A fresh 256-bit key encrypts the credentials (JSON list of
  ``{frontier, serial, level, client, secret}``; level 0 is an MQTT broker login) with
  AES-256-GCM (96-bit nonce, associated data ``cgm-handover/1``); that key is encrypted
  with RSA-OAEP (MGF1-SHA-256, SHA-256) for the recipient's public key. All binary fields
  are standard base64; ``recipient_sha256`` is the SHA-256 of the recipient's public key
  (SubjectPublicKeyInfo DER), so the right private key is easy to pick.

Decrypt with ``cgm handover decrypt FILE --key private.pem``, or with any RSA-OAEP and
AES-GCM implementation from the description above.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from datetime import UTC, datetime
from typing import Any

import psycopg
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from psycopg.types.json import Jsonb

from cgm.frontier_log import LEVEL2_ACCESS
from cgm.security.secrets import SecretBox

FORMAT = "cgm-handover/1"
ALGORITHM = "RSA-OAEP-SHA256+A256GCM"
MIN_RSA_BITS = 2048
PURPOSE = "credentials handed over to the incoming representative"


class HandoverError(ValueError):
    """A key or file that cannot be used (the message never carries a secret)."""


def _oaep() -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def load_public_key(pem: bytes) -> rsa.RSAPublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError:
        raise HandoverError("not a PEM public key") from None
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < MIN_RSA_BITS:
        raise HandoverError(f"the recipient key must be RSA of at least {MIN_RSA_BITS} bits")
    return key


def fingerprint(key: rsa.RSAPublicKey) -> str:
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def seal(plain: bytes, key: rsa.RSAPublicKey) -> dict[str, str]:
    data_key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(12)
    return {
        "algorithm": ALGORITHM,
        "recipient_sha256": fingerprint(key),
        "encrypted_key": _b64(key.encrypt(data_key, _oaep())),
        "nonce": _b64(nonce),
        "ciphertext": _b64(AESGCM(data_key).encrypt(nonce, plain, FORMAT.encode())),
    }


def open_envelope(envelope: dict[str, str], private_pem: bytes, password: bytes | None) -> bytes:
    try:
        key = serialization.load_pem_private_key(private_pem, password=password)
    except (ValueError, TypeError):
        raise HandoverError("not a PEM private key, or a wrong key password") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise HandoverError("the private key must be RSA")
    if envelope.get("algorithm") != ALGORITHM:
        raise HandoverError(f"unknown algorithm {envelope.get('algorithm')!r}")
    if envelope.get("recipient_sha256") != fingerprint(key.public_key()):
        raise HandoverError("this file was encrypted for another key")
    try:
        data_key = key.decrypt(base64.b64decode(envelope["encrypted_key"]), _oaep())
        return AESGCM(data_key).decrypt(
            base64.b64decode(envelope["nonce"]),
            base64.b64decode(envelope["ciphertext"]),
            FORMAT.encode(),
        )
    except Exception:  # noqa: BLE001 - a tampered or truncated file; no detail to leak
        raise HandoverError("the credentials do not decrypt: file altered or damaged") from None


_CREDS_SQL = """
SELECT f.code, m.serial, c.level, c.client, c.secret_enc
FROM meter_credential c JOIN meter m ON m.id = c.meter_id JOIN frontier f ON f.id = m.frontier_id
ORDER BY f.code, m.serial, c.level
"""
_USERS_SQL = """
SELECT u.username, u.level, u.active, u.created_at, p.last_login_at
FROM app_user u LEFT JOIN app_user_password p ON p.user_id = u.id ORDER BY u.username
"""
_METERS_SQL = """
SELECT f.code, m.serial, m.role, m.active,
       coalesce((SELECT array_agg(c.level ORDER BY c.level) FROM meter_credential c
                 WHERE c.meter_id = m.id AND c.level IN (1, 2)), '{}'),
       coalesce((SELECT json_agg(json_build_object('username', u.username, 'level', u.level)
                                 ORDER BY u.username)
                 FROM app_user u WHERE u.active AND (NOT u.scoped OR EXISTS (
                     SELECT 1 FROM app_user_frontier s
                     WHERE s.user_id = u.id AND s.frontier_id = f.id))), '[]')
FROM meter m JOIN frontier f ON f.id = m.frontier_id
ORDER BY f.code, m.serial
"""
_LOG_SQL = """
SELECT f.code, m.serial, l.at, l.actor, l.purpose, l.activities, l.proof
FROM frontier_log l JOIN frontier f ON f.id = l.frontier_id
LEFT JOIN meter m ON m.id = l.meter_id
WHERE l.kind = %s ORDER BY l.at, l.id
"""


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t else None


def build(
    conn: psycopg.Connection,
    box: SecretBox,
    recipient: rsa.RSAPublicKey,
    *,
    actor: str,
    cgm_code: str,
) -> dict[str, Any]:
    """The handover document; records the handover in every frontier's hoja de vida (in
    the caller's transaction: commit once the file is written)."""
    users = [
        {
            "username": name,
            "level": level,
            "active": active,
            "created_at": _iso(created),
            "last_login_at": _iso(last),
        }
        for name, level, active, created, last in conn.execute(_USERS_SQL)
    ]
    meter_access = [
        {
            "frontier": code,
            "serial": serial,
            "role": role,
            "active": active,
            "secrets_registered": list(levels),
            # Who reaches the meter through the CGM, at which level: active users, unscoped
            # or scoped to its frontier (cgm user scope).
            "people": people,
        }
        for code, serial, role, active, levels, people in conn.execute(_METERS_SQL)
    ]
    log = [
        {
            "frontier": code,
            "meter": serial,
            "at": _iso(at),
            "actor": who,
            "purpose": purpose,
            "activities": activities,
            "proof": proof,
        }
        for code, serial, at, who, purpose, activities, proof in conn.execute(
            _LOG_SQL, (LEVEL2_ACCESS,)
        )
    ]
    creds = [
        {"frontier": code, "serial": serial, "level": level, "client": client,
         "secret": box.decrypt(bytes(enc))}
        for code, serial, level, client, enc in conn.execute(_CREDS_SQL)
    ]  # fmt: skip
    envelope = seal(json.dumps(creds, sort_keys=True).encode(), recipient)
    del creds
    conn.execute(
        """INSERT INTO frontier_log (frontier_id, actor, kind, purpose, activities)
           SELECT id, %s, %s, %s, %s FROM frontier""",
        (
            actor,
            LEVEL2_ACCESS,
            PURPOSE,
            Jsonb(
                {
                    "activities": ["export credentials"],
                    "recipient_sha256": envelope["recipient_sha256"],
                }
            ),
        ),
    )
    return {
        "format": FORMAT,
        "created_at": datetime.now(UTC).isoformat(),
        "cgm_code": cgm_code,
        "exported_by": actor,
        "users": users,
        "meter_access": meter_access,
        "level2_log": log,
        "credentials": envelope,
    }


def decrypt(document: dict[str, Any], private_pem: bytes, password: bytes | None = None) -> list:
    """The credentials of a handover document, in clear."""
    if document.get("format") != FORMAT:
        raise HandoverError(f"not a {FORMAT} file")
    return json.loads(open_envelope(document["credentials"], private_pem, password))
