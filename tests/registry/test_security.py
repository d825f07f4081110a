"""Credential encryption key: configured, generated once with mode 0600, guarded."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from cgm.config import Settings
from cgm.security import SecretBox, SecretKeyError, load_key, secret_box


def test_key_generated_once_with_mode_0600(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    key = load_key(settings)
    path = tmp_path / "data" / "secret.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(settings) == key  # reused, not regenerated
    token = secret_box(settings).encrypt("pw")
    assert secret_box(settings).decrypt(token) == "pw"


def test_configured_key_wins_and_no_file_is_written(tmp_path: Path) -> None:
    key = Fernet.generate_key()
    settings = Settings(data_dir=tmp_path, secret_key=key.decode())
    assert load_key(settings) == key
    assert not (tmp_path / "secret.key").exists()


def test_bad_configured_key_is_refused_without_echo(tmp_path: Path) -> None:
    with pytest.raises(SecretKeyError) as exc:
        load_key(Settings(data_dir=tmp_path, secret_key="not-a-key-but-private"))
    assert "not-a-key-but-private" not in str(exc.value)


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    path.write_bytes(Fernet.generate_key())
    path.chmod(0o644)
    with pytest.raises(SecretKeyError, match="chmod 600"):
        load_key(Settings(data_dir=tmp_path))


def test_wrong_key_cannot_decrypt_and_says_so_without_secret() -> None:
    token = SecretBox(Fernet.generate_key()).encrypt("topsecret")
    assert b"topsecret" not in token
    with pytest.raises(SecretKeyError) as exc:
        SecretBox(Fernet.generate_key()).decrypt(token)
    assert "topsecret" not in str(exc.value)
    assert "key" not in repr(SecretBox(Fernet.generate_key())).lower().replace("<key hidden>", "")
