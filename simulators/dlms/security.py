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
