"""DLMS authentication per access level: LLS, HLS mechanism 2, HLS-GMAC (mechanism 5).

Why HLS mechanism 2 is written here and not taken from dlms-cosem: 25.1.0's
``HighLevelSecurityCommonAuthentication`` sends the *secret itself* as the client-to-server
challenge, so the HLS key would cross the link in clear in every AARQ. Here the challenge is
16 random bytes, and the meter's answer (AES-128-ECB of that challenge under the key) is
checked before the association is used.

HLS-GMAC uses dlms-cosem's ``HighLevelSecurityGmacAuthentication`` with global ciphering.
Its invocation counters must never repeat for one key (AES-GCM nonce = system title ‖
counter), across sessions, restarts and collectors: the driver takes them in ranges from an
:class:`InvocationCounterStore` that the application persists (the CGM keeps it in
PostgreSQL).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from dlms_cosem import enumerations as en
from dlms_cosem.security import (
    HighLevelSecurityGmacAuthentication,
    LowLevelSecurityAuthentication,
)

MECHANISMS = ("lls", "hls", "hls-gmac")
CHALLENGE_BYTES = 16  # what common meters accept (some take only 16)
MAX_INVOCATION_COUNTER = 0xFFFF_FFFF


def parse_secret(secret: str) -> bytes:
    """Password or key: text as UTF-8, or ``hex:...`` for binary."""
    if secret.startswith("hex:"):
        return bytes.fromhex(secret[4:])
    return secret.encode()


def aes_ecb_blocks(key: bytes, data: bytes) -> bytes:
    """AES-128-ECB of ``data`` zero-padded to whole blocks, key zero-padded to 16 bytes.

    This is what meters implementing mechanism 2 compute (the Blue Book leaves the
    function to the manufacturer; AES-128 with this padding is the common choice).
    """
    if len(key) > 16:
        raise ValueError("an HLS mechanism 2 key has at most 16 bytes")
    key = key.ljust(16, b"\x00")
    if len(data) % 16:
        data = data + bytes(16 - len(data) % 16)
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305 - the mechanism
    return encryptor.update(data) + encryptor.finalize()


@dataclass
class HlsAes128Authentication:
    """HLS mechanism 2 (manufacturer-specific, AES-128 as common meters implement it)."""

    key: bytes
    challenge: bytes = b""
    authentication_method = en.AuthenticationMechanism.HLS

    def __post_init__(self) -> None:
        if not 1 <= len(self.key) <= 16:
            raise ValueError("an HLS mechanism 2 key has 1 to 16 bytes")
        if not self.challenge:
            self.challenge = secrets.token_bytes(CHALLENGE_BYTES)

    def __repr__(self) -> str:
        return "HlsAes128Authentication(<key hidden>)"

    def get_calling_authentication_value(self) -> bytes:
        return self.challenge

    def hls_generate_reply_data(self, connection: object) -> bytes:
        challenge = connection.meter_to_client_challenge  # type: ignore[attr-defined]
        if not challenge:
            raise ValueError("the meter sent no challenge in its AARE")
        return aes_ecb_blocks(self.key, bytes(challenge))

    def hls_meter_data_is_valid(self, data: bytes, connection: object) -> bool:
        return hmac.compare_digest(bytes(data), aes_ecb_blocks(self.key, self.challenge))


@dataclass(frozen=True)
class GmacKeys:
    """Global unicast encryption key and authentication key of one meter (16 bytes each)."""

    encryption: bytes
    authentication: bytes

    def __repr__(self) -> str:
        return "GmacKeys(<hidden>)"

    @classmethod
    def parse(cls, secret: str) -> GmacKeys:
        """``ek=<32 hex>;ak=<32 hex>`` (the stored, encrypted credential of a GMAC level)."""
        fields: dict[str, str] = {}
        for part in secret.replace(",", ";").split(";"):
            name, sep, value = part.strip().partition("=")
            if sep:
                fields[name.strip().lower()] = value.strip()
        try:
            ek, ak = bytes.fromhex(fields["ek"]), bytes.fromhex(fields["ak"])
        except (KeyError, ValueError):
            raise ValueError(
                "an HLS-GMAC secret is 'ek=<32 hex digits>;ak=<32 hex digits>'"
            ) from None
        if len(ek) != 16 or len(ak) != 16:
            raise ValueError("HLS-GMAC keys are 16 bytes (32 hex digits) each")
        return cls(ek, ak)

    def counter_key(self, client_system_title: bytes) -> str:
        """Name of the invocation-counter sequence: one per (client system title, key).

        A truncated hash of the encryption key, never the key: counters need only be unique
        per key and sender, whatever endpoint or meter record the key is used through.
        """
        digest = hashlib.sha256(b"cgm-dlms-ic\x00" + self.encryption).hexdigest()[:16]
        return f"{client_system_title.hex()}:{digest}"


class InvocationCounterStore(Protocol):
    """Hands out ranges of invocation counters that are never handed out again.

    ``reserve(key, count)`` returns ``first``: the caller owns ``first … first+count-1``.
    Implementations must be atomic across processes and survive restarts.
    """

    async def reserve(self, key: str, count: int) -> int: ...


class MemoryCounterStore:
    """In-process store, for tools and tests that must not touch a database.

    Counters restart with the process, so a real meter would reject them after a restart:
    never use it for collection.
    """

    def __init__(self, start: int = 1) -> None:
        self._next: dict[str, int] = {}
        self.start = start

    async def reserve(self, key: str, count: int) -> int:
        first = self._next.get(key, self.start)
        self._next[key] = first + count
        return first


def lls(secret: str) -> LowLevelSecurityAuthentication:
    return LowLevelSecurityAuthentication(secret=parse_secret(secret))


def gmac() -> HighLevelSecurityGmacAuthentication:
    """dlms-cosem's mechanism 5; keys and system titles live on the connection."""
    return HighLevelSecurityGmacAuthentication(challenge_length=CHALLENGE_BYTES)
