"""Server-side DLMS security of the simulated meter: LLS, HLS mechanism 2, HLS-GMAC.

Written from the Blue Book (DLMS UA 1000-2, 9.2.7.4 and 9.2.7.2.4) and with ``cryptography``
directly: nothing here comes from the driver's security code, so a mistake in one is not
mirrored in the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from dlms_cosem import enumerations as en

from drivers.base import AccessLevel
from simulators.meter import SimulatedMeter

MECHANISM_IDS = {
    "lls": en.AuthenticationMechanism.LLS,
    "hls": en.AuthenticationMechanism.HLS,
    "hls-gmac": en.AuthenticationMechanism.HLS_GMAC,
}


@dataclass
class MeterSecurity:
    """Which mechanism each level of one simulated meter uses, and its ciphering state.

    The keys are the level's secret of :class:`~simulators.meter.Secrets`: the LLS password,
    the HLS mechanism-2 key (at most 16 bytes), or ``ek=<hex>;ak=<hex>`` for HLS-GMAC.
    """

    level1: str = "lls"
    level2: str = "lls"
    system_title: bytes = b"SIM\x00\x00\x00\x00\x01"
    invocation_counter: int = 1  # the meter's own, never goes down (next one to use)
    # Highest invocation counter seen per client system title: a replay is refused.
    client_counters: dict[bytes, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for mechanism in (self.level1, self.level2):
            if mechanism not in MECHANISM_IDS:
                raise ValueError(f"unknown mechanism {mechanism!r}")

    def mechanism(self, level: AccessLevel) -> str:
        return self.level2 if level == AccessLevel.CONFIGURE else self.level1

    def next_counter(self) -> int:
        value = self.invocation_counter
        self.invocation_counter += 1
        return value


def aes128_ecb(key: bytes, data: bytes) -> bytes:
    """Mechanism 2 as common meters do it: key and data zero-padded to 16-byte blocks."""
    key = key[:16].ljust(16, b"\x00")
    if len(data) % 16:
        data += bytes(16 - len(data) % 16)
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def level_secret(meter: SimulatedMeter, level: AccessLevel) -> str:
    return meter.secrets.level2 if level == AccessLevel.CONFIGURE else meter.secrets.level1


def hls_key(meter: SimulatedMeter, level: AccessLevel) -> bytes:
    secret = level_secret(meter, level)
    return bytes.fromhex(secret[4:]) if secret.startswith("hex:") else secret.encode()


# --- HLS-GMAC and global ciphering (security suite 0) ------------------------------------

SC_AUTH_ENC = 0x30  # security control: authenticated and encrypted, suite 0
SC_AUTH = 0x10  # authenticated only (the HLS-GMAC proofs)
TAG_BYTES = 12


@dataclass(frozen=True)
class GmacKeys:
    encryption: bytes
    authentication: bytes


def gmac_keys(meter: SimulatedMeter, level: AccessLevel) -> GmacKeys:
    """The level's secret read as ``ek=<hex>;ak=<hex>``."""
    fields = dict(
        part.strip().split("=", 1) for part in level_secret(meter, level).split(";") if "=" in part
    )
    return GmacKeys(bytes.fromhex(fields["ek"]), bytes.fromhex(fields["ak"]))


def _gcm(keys: GmacKeys, title: bytes, counter: int, tag: bytes | None = None) -> Cipher:
    iv = title + counter.to_bytes(4, "big")
    return Cipher(algorithms.AES(keys.encryption), modes.GCM(iv, tag, min_tag_length=TAG_BYTES))


def seal(keys: GmacKeys, title: bytes, counter: int, plain: bytes) -> bytes:
    """Ciphertext ‖ 12-byte tag of ``plain`` (AAD = SC ‖ AK), Blue Book 9.2.7.2.4."""
    encryptor = _gcm(keys, title, counter).encryptor()
    encryptor.authenticate_additional_data(bytes([SC_AUTH_ENC]) + keys.authentication)
    out = encryptor.update(plain) + encryptor.finalize()
    return out + encryptor.tag[:TAG_BYTES]


def open_sealed(keys: GmacKeys, title: bytes, counter: int, sealed: bytes) -> bytes:
    """Inverse of :func:`seal`; raises ``cryptography.exceptions.InvalidTag`` if forged."""
    body, tag = sealed[:-TAG_BYTES], sealed[-TAG_BYTES:]
    decryptor = _gcm(keys, title, counter, tag).decryptor()
    decryptor.authenticate_additional_data(bytes([SC_AUTH_ENC]) + keys.authentication)
    return decryptor.update(body) + decryptor.finalize()


def gmac_proof(keys: GmacKeys, title: bytes, counter: int, challenge: bytes) -> bytes:
    """HLS-GMAC f(challenge) = SC ‖ IC ‖ GMAC(SC ‖ AK ‖ challenge) (mechanism 5)."""
    encryptor = _gcm(keys, title, counter).encryptor()
    encryptor.authenticate_additional_data(bytes([SC_AUTH]) + keys.authentication + challenge)
    encryptor.finalize()
    return bytes([SC_AUTH]) + counter.to_bytes(4, "big") + encryptor.tag[:TAG_BYTES]


def length_prefix(n: int) -> bytes:
    """A-XDR length: one byte below 128, else 0x8k and k bytes (ciphered APDUs > 255 bytes)."""
    if n < 0x80:
        return bytes([n])
    size = (n.bit_length() + 7) // 8
    return bytes([0x80 | size]) + n.to_bytes(size, "big")


def general_glo_ciphering(title: bytes, counter: int, sealed: bytes) -> bytes:
    """general-glo-ciphering APDU (tag 0xDB) with a length that may exceed 255 bytes."""
    content = bytes([SC_AUTH_ENC]) + counter.to_bytes(4, "big") + sealed
    return b"\xdb" + length_prefix(len(title)) + title + length_prefix(len(content)) + content


def parse_general_glo_ciphering(apdu: bytes) -> tuple[bytes, int, int, bytes]:
    """(system title, security control, invocation counter, sealed) of a 0xDB APDU."""
    at = 1
    title_len, at = _read_length(apdu, at)
    title, at = apdu[at : at + title_len], at + title_len
    content_len, at = _read_length(apdu, at)
    content = apdu[at : at + content_len]
    if len(content) != content_len or content_len < 5 + TAG_BYTES:
        raise ValueError("general-glo-ciphering length does not match")
    return bytes(title), content[0], int.from_bytes(content[1:5], "big"), bytes(content[5:])


def _read_length(data: bytes, at: int) -> tuple[int, int]:
    first = data[at]
    if first < 0x80:
        return first, at + 1
    size = first & 0x7F
    return int.from_bytes(data[at + 1 : at + 1 + size], "big"), at + 1 + size


# Service-specific global ciphering (glo-get/set/action): request tag -> response tag. The
# sender's system title is the one from the AARQ.
GLO_RESPONSE = {0xC8: 0xCC, 0xC9: 0xCD, 0xCB: 0xCF}


def parse_glo_service(apdu: bytes) -> tuple[int, int, bytes]:
    """(security control, invocation counter, sealed) of a glo-get/set/action request."""
    length, at = _read_length(apdu, 1)
    content = apdu[at : at + length]
    if len(content) != length or length < 5 + TAG_BYTES:
        raise ValueError("glo-ciphered APDU length does not match")
    return content[0], int.from_bytes(content[1:5], "big"), bytes(content[5:])


def glo_service(tag: int, counter: int, sealed: bytes) -> bytes:
    content = bytes([SC_AUTH_ENC]) + counter.to_bytes(4, "big") + sealed
    return bytes([tag]) + length_prefix(len(content)) + content
