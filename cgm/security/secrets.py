"""Meter credentials encrypted at rest with Fernet (AES-128-CBC + HMAC-SHA256).

The key is ``Settings.secret_key`` when configured (e.g. from a secrets manager through
``CGM_SECRET_KEY``); otherwise one is generated once into ``data_dir/secret.key`` with mode
0600, so a fresh install is encrypted from the first import without any setup. Losing the key
loses the stored credentials (they must be re-imported), never the readings.

Nothing here ever puts a secret or the key into an exception message or a log line.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from cgm.config import Settings

log = logging.getLogger(__name__)

KEY_FILE = "secret.key"


class SecretKeyError(Exception):
    """The encryption key is missing, malformed, unreadable or does not match the data."""


def _check_key(key: bytes, origin: str) -> bytes:
    try:
        Fernet(key)
    except (ValueError, TypeError):
        # The key itself is never echoed.
        raise SecretKeyError(
            f"{origin} is not a valid Fernet key (32 url-safe base64-encoded bytes); "
            "generate one with: python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())'"
        ) from None
    return key


def load_key(settings: Settings) -> bytes:
    """The configured key, else the one in ``data_dir/secret.key`` (created on first use)."""
    if settings.secret_key:
        return _check_key(settings.secret_key.strip().encode(), "secret_key (CGM_SECRET_KEY)")
    path = Path(settings.data_dir) / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Fernet.generate_key()
        try:
            # O_EXCL: two processes starting together cannot both write a key.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(key + b"\n")
            log.info("generated a new credential encryption key at %s", path)
            return key
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretKeyError(
            f"{path} is accessible by group or others (mode {stat.S_IMODE(mode):o}); "
            f"run: chmod 600 {path}"
        )
    return _check_key(path.read_bytes().strip(), str(path))


class SecretBox:
    """Encrypts and decrypts meter secrets. Ciphertexts are random: equal secrets differ."""

    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(_check_key(key, "the key"))

    def __repr__(self) -> str:
        return "SecretBox(<key hidden>)"

    def encrypt(self, secret: str) -> bytes:
        return self._fernet.encrypt(secret.encode("utf-8"))

    def decrypt(self, token: bytes) -> str:
        try:
            return self._fernet.decrypt(bytes(token)).decode("utf-8")
        except InvalidToken:
            raise SecretKeyError(
                "a stored credential cannot be decrypted with the current key "
                "(was secret_key changed or data_dir/secret.key replaced?)"
            ) from None


def secret_box(settings: Settings) -> SecretBox:
    return SecretBox(load_key(settings))
