"""How a session reaches and authenticates to a meter: framing and security per access level.

Everything that differs between meters below the COSEM objects lives here: the link
(wrapper or HDLC, with HDLC addresses), the authentication mechanism of each level (LLS,
HLS mechanism 2, HLS-GMAC) and, for GMAC, global ciphering with invocation counters taken
from an :class:`~drivers.dlms.security.InvocationCounterStore`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dlms_cosem import cosem as lib_cosem
from dlms_cosem import dlms_data
from dlms_cosem import enumerations as en
from dlms_cosem import state as dlms_state
from dlms_cosem.connection import DlmsConnection
from dlms_cosem.protocol import xdlms

from drivers.base import AccessLevel, Credentials

from . import security
from .hdlc import MAX_INFO, HdlcAddressing, HdlcError, HdlcTransport
from .transport import WrapperTransport

__all__ = ["ACCESS_KEYS", "AccessParams", "Association", "HdlcError"]

ACCESS_KEYS = frozenset(
    {
        "level1_auth",
        "level2_auth",
        "client_system_title",
        "framing",
        "hdlc_server_upper",
        "hdlc_server_lower",
        "hdlc_address_size",
        "hdlc_max_info",
    }
)
FRAMINGS = ("wrapper", "hdlc")
# Blue Book system titles are 3 manufacturer letters + 5 bytes; "CGM" marks this head-end.
DEFAULT_SYSTEM_TITLE = b"CGM" + bytes([0, 0, 0, 0, 1])
COUNTER_BATCH = 64  # invocation counters reserved at a time (a session uses ~10)


class AuthenticationRefused(Exception):
    """HLS pass 3/4 failed: the meter refused our answer, or its own did not check out."""


@dataclass(frozen=True)
class AccessParams:
    """The per-meter access parameters (see README.md, "Parameters")."""

    level1_auth: str = "lls"
    level2_auth: str = "lls"
    client_system_title: bytes = DEFAULT_SYSTEM_TITLE
    framing: str = "wrapper"
    hdlc_server_upper: int | None = None  # default: the server_address parameter
    hdlc_server_lower: int | None = None
    hdlc_address_size: int | None = None  # default: 1 without a lower address, else 4
    hdlc_max_info: int = MAX_INFO

    @classmethod
    def from_mapping(cls, params: Mapping[str, Any]) -> AccessParams:
        values: dict[str, Any] = {}
        for level in ("level1_auth", "level2_auth"):
            if level in params:
                mechanism = str(params[level]).lower()
                if mechanism not in security.MECHANISMS:
                    known = ", ".join(security.MECHANISMS)
                    raise ValueError(f"{level} {params[level]!r}: expected one of {known}")
                values[level] = mechanism
        if "client_system_title" in params:
            title = bytes.fromhex(str(params["client_system_title"]))
            if len(title) != 8:
                raise ValueError("client_system_title is 8 bytes (16 hex digits)")
            values["client_system_title"] = title
        if "framing" in params:
            framing = str(params["framing"]).lower()
            if framing not in FRAMINGS:
                raise ValueError(f"framing {params['framing']!r}: expected wrapper or hdlc")
            values["framing"] = framing
        for key in ("hdlc_server_upper", "hdlc_server_lower", "hdlc_address_size"):
            if params.get(key) is not None:
                values[key] = int(str(params[key]), 0)
        if "hdlc_max_info" in params:
            values["hdlc_max_info"] = int(params["hdlc_max_info"])
            if not 32 <= values["hdlc_max_info"] <= 2030:
                raise ValueError("hdlc_max_info: 32 … 2030 bytes")
        out = cls(**values)
        if out.framing == "hdlc":
            out.hdlc(client=0x10, server_address=1)  # checks the addresses now, not at connect
        return out

    def mechanism(self, level: AccessLevel) -> str:
        return self.level2_auth if level == AccessLevel.CONFIGURE else self.level1_auth

    def hdlc(self, client: int, server_address: int) -> HdlcAddressing:
        size = self.hdlc_address_size or (1 if self.hdlc_server_lower is None else 4)
        return HdlcAddressing(
            client=client,
            server_upper=self.hdlc_server_upper or server_address,
            server_lower=self.hdlc_server_lower,
            size=size,
        )


def check_secret(mechanism: str, secret: str) -> None:
    """Raise ValueError if ``secret`` cannot serve ``mechanism`` (the message never shows it)."""
    if mechanism == "hls-gmac":
        security.GmacKeys.parse(secret)
    elif mechanism == "hls":
        try:
            key = security.parse_secret(secret)
        except ValueError:
            raise ValueError("an HLS key given as hex: is not valid hex") from None
        if not 1 <= len(key) <= 16:
            raise ValueError("an HLS mechanism 2 key has 1 to 16 bytes")


@dataclass
class Association:
    """The sans-I/O DLMS connection and the transport of one session, set up for one level."""

    conn: DlmsConnection
    transport: WrapperTransport | HdlcTransport
    mechanism: str
    counters: security.InvocationCounterStore | None = None
    counter_key: str | None = None
    _counter_limit: int = field(default=0, repr=False)

    @classmethod
    def create(
        cls,
        access: AccessParams,
        credentials: Credentials,
        client_sap: int,
        server_address: int,
        max_pdu_size: int,
        counters: security.InvocationCounterStore | None,
    ) -> Association:
        mechanism = access.mechanism(credentials.level)
        keys: security.GmacKeys | None = None
        if mechanism == "lls":
            auth: Any = security.lls(credentials.secret)
        elif mechanism == "hls":
            auth = security.HlsAes128Authentication(security.parse_secret(credentials.secret))
        else:
            if counters is None:
                raise ValueError(
                    "HLS-GMAC needs a persistent invocation counter store "
                    "(DlmsDriver(counter_store=...)): counters must never be reused"
                )
            keys = security.GmacKeys.parse(credentials.secret)
            auth = security.gmac()
        conn = DlmsConnection(
            authentication=auth,
            client_system_title=access.client_system_title,
            global_encryption_key=keys.encryption if keys else None,
            global_authentication_key=keys.authentication if keys else None,
            max_pdu_size=max_pdu_size,
        )
        if access.framing == "hdlc":
            transport: WrapperTransport | HdlcTransport = HdlcTransport(
                access.hdlc(client_sap, server_address), access.hdlc_max_info
            )
        else:
            transport = WrapperTransport(client_sap, server_address)
        return cls(
            conn,
            transport,
            mechanism,
            counters if keys else None,
            keys.counter_key(access.client_system_title) if keys else None,
        )

    async def before_send(self) -> None:
        """For GMAC: make sure the next invocation counter is one this process reserved."""
        if self.counters is None or self.counter_key is None:
            return
        if self.conn.client_invocation_counter < self._counter_limit:
            return
        first = await self.counters.reserve(self.counter_key, COUNTER_BATCH)
        if first < 1 or first + COUNTER_BATCH - 1 > security.MAX_INVOCATION_COUNTER:
            raise ValueError(
                "invocation counters for this key are exhausted: the meter needs new keys"
            )
        self.conn.client_invocation_counter = first
        self._counter_limit = first + COUNTER_BATCH

    @property
    def needs_hls_pass(self) -> bool:
        return self.conn.state.current_state is dlms_state.SHOULD_SEND_HLS_SEVER_CHALLENGE_RESULT

    async def hls_pass(self, exchange: Callable[[Any], Awaitable[Any]]) -> None:
        """HLS passes 3 and 4: reply_to_HLS_authentication on the current association.

        ``exchange`` sends one APDU and returns the parsed answer (the session's).
        """
        await self.before_send()
        reply = self.conn.authentication.hls_generate_reply_data(self.conn)
        if self.mechanism == "hls-gmac":
            # dlms-cosem computes the GMAC with the counter it is about to use to cipher
            # the ACTION itself: one GCM nonce for two messages. Move past it.
            self.conn.client_invocation_counter += 1
            await self.before_send()
        request = xdlms.ActionRequestNormal(
            cosem_method=lib_cosem.CosemMethod(
                en.CosemInterface.ASSOCIATION_LN, lib_cosem.Obis(0, 0, 40, 0, 0), 1
            ),
            data=dlms_data.OctetStringData(reply).to_bytes(),
        )
        answer = await exchange(request)
        if self.conn.state.current_state is not dlms_state.READY:
            if isinstance(answer, xdlms.ActionResponseNormalWithData):
                raise AuthenticationRefused("the meter's answer to our challenge is wrong")
            raise AuthenticationRefused(f"the meter refused our answer ({type(answer).__name__})")
