"""A DLMS/COSEM meter over the IEC 62056-47 TCP wrapper, serving :class:`SimulatedMeter`.

One TCP port hosts several logical devices addressed by the wrapper destination wPort, as a
data concentrator or a multi-meter gateway would. Requests are parsed with dlms-cosem's
``XDlmsApduFactory``; answers are encoded with its classes except where 25.1.0 is broken
(marked ``# hand-encoded``).

Access levels (art. 17), both Low Level Security (LLS) associations:

* client SAP 0x20 (reading client) with ``meter.secrets.level1`` - GET only;
* client SAP 0x01 (management client) with ``meter.secrets.level2`` - GET and SET of the clock.

Any other client SAP, no authentication, or HLS is rejected in the AARE.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dlms_cosem import dlms_data
from dlms_cosem import enumerations as en
from dlms_cosem.connection import XDlmsApduFactory
from dlms_cosem.protocol import acse, xdlms
from dlms_cosem.protocol.xdlms.conformance import Conformance
from dlms_cosem.security import SecurityControlField

from drivers.base import AccessLevel, Channel
from simulators.meter import FaultAction, SimulatedMeter

from . import hdlc
from . import objects as ob
from .objects import DlmsVariant, Layout
from .security import (
    GLO_RESPONSE,
    MECHANISM_IDS,
    SC_AUTH_ENC,
    GmacKeys,
    MeterSecurity,
    aes128_ecb,
    general_glo_ciphering,
    glo_service,
    gmac_keys,
    gmac_proof,
    hls_key,
    open_sealed,
    parse_general_glo_ciphering,
    parse_glo_service,
    seal,
)
from .wrapper import WrapperError, unwrap, wrap

DEFAULT_MAX_PDU = 1024  # what small meters offer; large profile reads need blocks

# What this server implements; the AARE grants the intersection with the client's proposal.
SUPPORTED = Conformance(
    get=True,
    set=True,
    selective_access=True,
    block_transfer_with_get_or_read=True,
    multiple_references=True,  # GET-with-list
)

CLIENT_LEVELS = {
    ob.READING_CLIENT: AccessLevel.READ,
    ob.MANAGEMENT_CLIENT: AccessLevel.CONFIGURE,
}

_BLOCK_OVERHEAD = 12  # C4 02 iid last block-number(4) choice length(≤4)


@dataclass
class _Association:
    """Per-connection state: who is associated, what was negotiated, a pending long GET."""

    level: AccessLevel | None = None
    pending: AccessLevel | None = None  # HLS: accepted, waiting for the client's pass 3
    mechanism: str = "lls"
    server_challenge: bytes = b""
    client_challenge: bytes = b""
    keys: GmacKeys | None = None  # HLS-GMAC: every APDU after the AARQ is ciphered
    client_title: bytes = b""
    client_max_pdu: int = 0xFFFF
    conformance: Conformance = field(default_factory=Conformance)
    blocks: list[bytes] = field(default_factory=list)
    block_sent: int = 0
    block_invoke: int = 0
    endless: bool = False  # the meter's variant: blocks that never end


@dataclass
class ServerStats:
    associations: int = 0
    rejected: int = 0
    blocks_sent: int = 0
    requests: int = 0
    invocation_counters: list[int] = field(default_factory=list)  # clients', as received


class DlmsServer:
    """A running simulator; ``await server.stop()`` (or ``async with``) closes everything."""

    def __init__(
        self,
        meters: Mapping[int, SimulatedMeter],
        max_pdu_size: int,
        security: Mapping[int, MeterSecurity] | None = None,
        framing: str = "wrapper",
        hdlc_lower: int | None = None,
        hdlc_address_size: int = 1,
        variants: Mapping[int, DlmsVariant] | None = None,
    ) -> None:
        if framing not in ("wrapper", "hdlc"):
            raise ValueError(f"framing {framing!r}: wrapper or hdlc")
        self.framing = framing
        # HDLC: meters are addressed by the upper (logical) address, the wPort's equivalent;
        # the lower (physical) address and the address size are the device's.
        self.hdlc_lower = hdlc_lower
        self.hdlc_address_size = hdlc_address_size
        self.hdlc_max_receive = hdlc.MAX_INFO  # a test may announce a smaller buffer
        self.meters = dict(meters)
        self._variants = {id(self.meters[port]): v for port, v in (variants or {}).items()}
        # Per served meter (keyed by the meter object, found from its wPort).
        self._security = {id(self.meters[port]): sec for port, sec in (security or {}).items()}
        self.max_pdu_size = max_pdu_size
        self.stats = ServerStats()
        self._server: asyncio.Server | None = None
        # Open connections: stream writers (HDLC) or transports (wrapper); both close().
        self._connections: set[asyncio.StreamWriter | asyncio.BaseTransport] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._tables: dict[
            int, tuple[SimulatedMeter, dict[bytes, tuple[int, dict[int, Getter]]]]
        ] = {}
        self._layouts: dict[int, Layout] = {}
        self._endless = False  # set per request from the meter's variant

    def security_of(self, meter: SimulatedMeter) -> MeterSecurity:
        """The meter's mechanisms (LLS at both levels unless ``serve(security=...)`` says)."""
        return self._security.setdefault(id(meter), MeterSecurity())

    @property
    def host(self) -> str:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[0]

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def start(self, host: str, port: int) -> None:
        self._prepare()
        if self.framing == "hdlc":
            self._server = await asyncio.start_server(self._handle_hdlc, host, port)
        else:
            loop = asyncio.get_running_loop()
            self._server = await loop.create_server(self._wrapper_connection, host, port)

    def _prepare(self) -> None:
        """Build each meter's object table, sum its registers and compute its recent
        intervals before serving: a long-running simulator does this once per meter, and a
        session then pays only for what changed since (an interval closed: one addition per
        register, its values computed ahead by the meter). Without it the first session of
        every meter carried ~0.4 ms of one-off work."""
        for meter in self.meters.values():
            self._table(meter)
            meter.registers()
            now = meter.real_now()
            meter.profile(now - meter.capture_period * 2, now)

    async def stop(self) -> None:
        """Stop listening, close every open connection and wait for the handlers to end."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._connections):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> DlmsServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- connection loop ----------------------------------------------------------------

    def _wrapper_connection(self) -> asyncio.Protocol:
        return _WrapperConnection(self)

    async def _handle_hdlc(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """One TCP connection carrying an HDLC link (see :mod:`simulators.dlms.hdlc`)."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._connections.add(writer)
        association = _Association()
        answered = 0

        def accepts(upper: int, lower: int | None, size: int) -> bool:
            return (
                upper in self.meters and size == self.hdlc_address_size and lower == self.hdlc_lower
            )

        async def answer(upper: int, client: int, apdu: bytes) -> bytes | None:
            nonlocal answered
            meter = self.meters[upper]
            self.stats.requests += 1
            reply = self._answer(association, meter, client, apdu)
            action = await meter.faults.before_answer(answered)
            if action is FaultAction.SILENT:
                return None
            if action is FaultAction.DROP:
                raise ConnectionResetError("fault: drop")
            if action is FaultAction.CORRUPT:
                reply = b"\xff" + bytes(b ^ 0x5A for b in reply[1 : max(2, len(reply) // 2)])
            answered += 1
            return reply

        try:
            await hdlc.HdlcLink(accepts, self.hdlc_max_receive).serve(reader, writer, answer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._connections.discard(writer)
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _answer(
        self, association: _Association, meter: SimulatedMeter, client: int, apdu: bytes
    ) -> bytes:
        """The answer to one APDU; under HLS-GMAC, deciphered and ciphered around it."""
        self._endless = self.variant_of(meter).endless_blocks
        keys = association.keys
        general = bool(apdu) and apdu[0] == 0xDB  # general-glo-ciphering (dlms-cosem)
        service = bool(apdu) and apdu[0] in GLO_RESPONSE  # glo-get/set/action (Gurux)
        if keys is None or not (general or service):
            if keys is not None and apdu[:1] not in (b"\x60", b"\x62"):  # AARQ, RLRQ
                return _exception(
                    en.StateException.SERVICE_NOT_ALLOWED, en.ServiceException.OTHER_REASON
                )
            return self._answer_plain(association, meter, client, apdu)
        security = self.security_of(meter)
        try:
            if general:
                title, control, counter, sealed = parse_general_glo_ciphering(apdu)
            else:
                title = association.client_title
                control, counter, sealed = parse_glo_service(apdu)
            if title != association.client_title or control != SC_AUTH_ENC:
                raise ValueError("wrong system title or security control")
            if counter <= security.client_counters.get(title, 0):
                raise ValueError(f"invocation counter {counter} replayed")  # never reused
            plain = open_sealed(keys, title, counter, sealed)
        except Exception:  # noqa: BLE001 - a forged, replayed or damaged APDU is refused
            self.stats.rejected += 1
            return _exception(
                en.StateException.SERVICE_NOT_ALLOWED, en.ServiceException.DECIPHERING_ERROR
            )
        security.client_counters[title] = counter
        self.stats.invocation_counters.append(counter)
        answer = self._answer_plain(association, meter, client, plain)
        if association.keys is None:
            return answer
        ours = security.next_counter()
        sealed = seal(keys, security.system_title, ours, answer)
        if service:  # answered in the same style it was asked
            return glo_service(GLO_RESPONSE[apdu[0]], ours, sealed)
        return general_glo_ciphering(security.system_title, ours, sealed)

    def _answer_plain(
        self, association: _Association, meter: SimulatedMeter, client: int, apdu: bytes
    ) -> bytes:
        _REQUESTS[0] += 1
        try:
            request = _parse(apdu)
        except Exception:  # noqa: BLE001 - anything unparseable gets an exception response
            return _exception(en.StateException.SERVICE_UNKNOWN, en.ServiceException.OTHER_REASON)
        if isinstance(request, acse.ApplicationAssociationRequest):
            return self._associate(association, meter, client, request)
        if isinstance(request, acse.ReleaseRequest):
            association.level = association.pending = association.keys = None
            association.blocks = []
            return _RLRE
        if association.level is None and association.pending is not None:
            if isinstance(request, xdlms.ActionRequestNormal):
                return self._hls_pass(association, meter, request)
        if association.level is None:
            return _exception(
                en.StateException.SERVICE_NOT_ALLOWED, en.ServiceException.OPERATION_NOT_POSSIBLE
            )
        if isinstance(request, xdlms.GetRequestNormal):
            return self._get(association, meter, request, apdu)
        if isinstance(request, xdlms.GetRequestWithList):
            return self._get_list(association, meter, request, apdu)
        if isinstance(request, xdlms.GetRequestNext):
            return self._next_block(association, request)
        if isinstance(request, xdlms.SetRequestNormal):
            return self._set(association, meter, request)
        return _exception(
            en.StateException.SERVICE_NOT_ALLOWED, en.ServiceException.SERVICE_NOT_SUPPORTED
        )

    # --- association --------------------------------------------------------------------

    def _associate(
        self,
        association: _Association,
        meter: SimulatedMeter,
        client: int,
        aarq: acse.ApplicationAssociationRequest,
    ) -> bytes:
        association.level = association.pending = association.keys = None
        diagnostic = en.AcseServiceUserDiagnostics.NULL
        level = CLIENT_LEVELS.get(client)
        security = self.security_of(meter)
        association.mechanism = security.mechanism(level) if level is not None else "lls"
        mechanism = MECHANISM_IDS[association.mechanism]
        initiate = aarq.user_information.content if aarq.user_information else None
        gmac = association.mechanism == "hls-gmac"
        if aarq.ciphered != gmac:  # ciphered context exactly when the level is HLS-GMAC
            diagnostic = en.AcseServiceUserDiagnostics.APPLICATION_CONTEXT_NAME_NOT_SUPPORTED
        elif level is None:
            diagnostic = en.AcseServiceUserDiagnostics.CALLING_AP_TITLE_NOT_RECOGNIZED
        elif aarq.authentication is None:
            diagnostic = en.AcseServiceUserDiagnostics.AUTHENTICATION_MECHANISM_NAME_REQUIRED
        elif aarq.authentication != mechanism:
            diagnostic = en.AcseServiceUserDiagnostics.AUTHENTICATION_MECHANISM_NAME_NOT_RECOGNIZED
        elif association.mechanism in ("hls", "hls-gmac"):
            challenge = bytes(aarq.authentication_value or b"")  # Blue Book: 8 to 64 bytes
            if gmac:  # keys that do not decipher, or a replayed counter: not authenticated
                initiate = self._decipher_initiate(association, meter, level, aarq)
            if not 8 <= len(challenge) <= 64 or (gmac and initiate is None):
                diagnostic = en.AcseServiceUserDiagnostics.AUTHENTICATION_FAILED
            elif not isinstance(initiate, xdlms.InitiateRequest):
                diagnostic = en.AcseServiceUserDiagnostics.NO_REASON_GIVEN
            association.client_challenge = challenge
        else:
            expected = (
                meter.secrets.level2 if level == AccessLevel.CONFIGURE else meter.secrets.level1
            ).encode()
            if not hmac.compare_digest(bytes(aarq.authentication_value or b""), expected):
                diagnostic = en.AcseServiceUserDiagnostics.AUTHENTICATION_FAILED
            elif not isinstance(initiate, xdlms.InitiateRequest):
                diagnostic = en.AcseServiceUserDiagnostics.NO_REASON_GIVEN
        if diagnostic != en.AcseServiceUserDiagnostics.NULL:
            association.keys = None
            self.stats.rejected += 1
            return acse.ApplicationAssociationResponse(
                result=en.AssociationResult.REJECTED_PERMANENT,
                result_source_diagnostics=diagnostic,
                authentication=mechanism,
            ).to_bytes()
        assert isinstance(initiate, xdlms.InitiateRequest) and level is not None
        # What this server implements (read each time: a test may narrow it).
        proposed = (_bits(initiate.proposed_conformance), _bits(SUPPORTED))
        association.conformance = _granted(*proposed)
        association.client_max_pdu = initiate.client_max_receive_pdu_size or 0xFFFF
        challenge = None
        if association.mechanism in ("hls", "hls-gmac"):
            # HLS pass 2: accept pending the client's proof; the association is not usable
            # until reply_to_HLS_authentication (pass 3) checks out.
            association.pending = level
            association.server_challenge = challenge = secrets.token_bytes(16)
        else:
            association.level = level
            self.stats.associations += 1
            # LLS: the same AARE for every association with the same outcome (encoded once).
            return _lls_aare(mechanism, *proposed, self.max_pdu_size)
        return acse.ApplicationAssociationResponse(
            result=en.AssociationResult.ACCEPTED,
            result_source_diagnostics=(
                en.AcseServiceUserDiagnostics.AUTHENTICATION_REQUIRED
                if challenge
                else en.AcseServiceUserDiagnostics.NULL
            ),
            authentication=mechanism,
            authentication_value=challenge,
            ciphered=gmac,
            system_title=security.system_title if gmac else None,
            user_information=acse.UserInformation(
                content=self._initiate_response(association, security)
            ),
        ).to_bytes()

    def _decipher_initiate(
        self,
        association: _Association,
        meter: SimulatedMeter,
        level: AccessLevel,
        aarq: acse.ApplicationAssociationRequest,
    ) -> xdlms.InitiateRequest | None:
        """The glo-initiate-request of an HLS-GMAC AARQ, deciphered; None if it does not
        decipher (wrong keys) or replays an invocation counter."""
        content = aarq.user_information.content if aarq.user_information else None
        title = bytes(aarq.system_title or b"")
        if not isinstance(content, xdlms.GlobalCipherInitiateRequest) or len(title) != 8:
            return None
        security = self.security_of(meter)
        try:
            keys = gmac_keys(meter, level)
            if content.invocation_counter <= security.client_counters.get(title, 0):
                return None
            plain = open_sealed(keys, title, content.invocation_counter, content.ciphered_text)
            initiate = xdlms.InitiateRequest.from_bytes(plain)
        except Exception:  # noqa: BLE001 - wrong keys or a damaged request: not associated
            return None
        security.client_counters[title] = content.invocation_counter
        self.stats.invocation_counters.append(content.invocation_counter)
        association.keys, association.client_title = keys, title
        return initiate

    def _initiate_response(
        self, association: _Association, security: MeterSecurity
    ) -> xdlms.InitiateResponse | xdlms.GlobalCipherInitiateResponse:
        response = xdlms.InitiateResponse(
            negotiated_conformance=association.conformance,
            server_max_receive_pdu_size=self.max_pdu_size,
        )
        if association.keys is None:
            return response
        counter = security.next_counter()
        return xdlms.GlobalCipherInitiateResponse(
            security_control=SecurityControlField(0, authenticated=True, encrypted=True),
            invocation_counter=counter,
            ciphered_text=seal(
                association.keys, security.system_title, counter, response.to_bytes()
            ),
        )

    def _hls_pass(
        self, association: _Association, meter: SimulatedMeter, request: xdlms.ActionRequestNormal
    ) -> bytes:
        """reply_to_HLS_authentication (Association LN method 1): passes 3 and 4."""
        method = request.cosem_method
        invoke = request.invoke_id_and_priority
        if (int(method.interface), method.instance.to_bytes(), method.method) != (
            en.CosemInterface.ASSOCIATION_LN,
            ob.ASSOCIATION_LN,
            1,
        ):
            return _exception(
                en.StateException.SERVICE_NOT_ALLOWED, en.ServiceException.OPERATION_NOT_POSSIBLE
            )
        level = association.pending
        assert level is not None
        data = bytes(request.data or b"")
        octet_string = len(data) >= 2 and data[0] == 0x09 and data[1] == len(data) - 2
        answer = data[2:] if octet_string else b""
        keys = association.keys
        if keys is not None:  # HLS-GMAC: SC ‖ IC ‖ GMAC(SC ‖ AK ‖ StoC) under the client's title
            counter = int.from_bytes(answer[1:5], "big") if len(answer) == 17 else 0
            expected = gmac_proof(
                keys, association.client_title, counter, association.server_challenge
            )
        else:
            expected = aes128_ecb(hls_key(meter, level), association.server_challenge)
        association.pending = None
        if not hmac.compare_digest(answer, expected):
            self.stats.rejected += 1
            return xdlms.ActionResponseNormal(
                status=en.ActionResultStatus.READ_WRITE_DENIED, invoke_id_and_priority=invoke
            ).to_bytes()
        association.level = level
        self.stats.associations += 1
        if keys is not None:
            security = self.security_of(meter)
            proof = gmac_proof(
                keys, security.system_title, security.next_counter(), association.client_challenge
            )
        else:
            proof = aes128_ecb(hls_key(meter, level), association.client_challenge)
        return xdlms.ActionResponseNormalWithData(
            status=en.ActionResultStatus.SUCCESS,
            data=bytes([0x09, len(proof)]) + proof,
            invoke_id_and_priority=invoke,
        ).to_bytes()

    # --- GET ----------------------------------------------------------------------------

    def _get(
        self,
        association: _Association,
        meter: SimulatedMeter,
        request: xdlms.GetRequestNormal,
        raw: bytes,
    ) -> bytes:
        association.blocks = []  # a new request aborts any long GET in progress
        invoke = raw[2]
        class_id, obis, attribute, _ = _addresses(raw, request)[0]
        try:
            data = self._read(meter, class_id, obis, attribute, raw)
        except _AccessError as exc:
            return xdlms.GetResponseNormalWithError(
                error=exc.result, invoke_id_and_priority=request.invoke_id_and_priority
            ).to_bytes()
        # hand-encoded: GetResponseNormal.to_bytes() raises TypeError in dlms-cosem 25.1.0.
        apdu = bytes([0xC4, 0x01, invoke, 0x00]) + data
        return self._fit(association, request.invoke_id_and_priority, apdu, data)

    def _get_list(
        self,
        association: _Association,
        meter: SimulatedMeter,
        request: xdlms.GetRequestWithList,
        raw: bytes,
    ) -> bytes:
        """GET-with-list: one get-data-result (data or data-access-result) per attribute."""
        association.blocks = []
        if not association.conformance.multiple_references:
            return _exception(
                en.StateException.SERVICE_NOT_ALLOWED, en.ServiceException.SERVICE_NOT_SUPPORTED
            )
        items = _addresses(raw, request)
        body = bytearray(dlms_data.encode_variable_integer(len(items)))
        for class_id, obis, attribute, selective in items:
            try:
                if selective:  # not offered inside a list here
                    raise _AccessError(en.DataAccessResult.OTHER_REASON)
                data = self._read(meter, class_id, obis, attribute, b"")
            except _AccessError as exc:
                body += bytes([1, exc.result])
            else:
                body += b"\x00" + data
        misbehaviour = self.variant_of(meter).list_answer
        if misbehaviour == "refused":
            return _exception(
                en.StateException.SERVICE_NOT_ALLOWED, en.ServiceException.SERVICE_NOT_SUPPORTED
            )
        if misbehaviour == "malformed":
            # As a field meter answered: the item count, then too few two-byte refusals, so a
            # strict parser runs out of bytes (IndexError('pop from empty bytearray')).
            body = bytearray(bytes([len(items)]) + b"\x01\x01" * (len(items) // 2))
        elif misbehaviour == "partial":  # well-formed, one result short
            body = bytearray(bytes([len(items) - 1]) + b"\x01\x01" * (len(items) - 1))
        # hand-encoded like GET-normal: C4 03 invoke-id, then the list.
        apdu = bytes([0xC4, 0x03, raw[2]]) + body
        return self._fit(association, request.invoke_id_and_priority, apdu, bytes(body))

    def _fit(
        self,
        association: _Association,
        invoke: xdlms.InvokeIdAndPriority,
        apdu: bytes,
        data: bytes,
    ) -> bytes:
        """``apdu`` if it fits the negotiated PDU size, else the first block of ``data``."""
        limit = min(association.client_max_pdu, self.max_pdu_size)
        if len(apdu) <= limit:
            return apdu
        if not association.conformance.block_transfer_with_get_or_read:
            return xdlms.GetResponseNormalWithError(
                error=en.DataAccessResult.OTHER_REASON, invoke_id_and_priority=invoke
            ).to_bytes()
        size = limit - _BLOCK_OVERHEAD
        association.blocks = [data[i : i + size] for i in range(0, len(data), size)]
        association.endless = self._endless
        association.block_sent = 0
        association.block_invoke = apdu[2]
        return self._send_block(association, invoke)

    def _send_block(self, association: _Association, invoke: xdlms.InvokeIdAndPriority) -> bytes:
        number = association.block_sent + 1
        association.block_sent = number
        self.stats.blocks_sent += 1
        if association.endless:  # a faulty meter: the last block never comes
            chunk = association.blocks[0]
            return xdlms.GetResponseWithBlock(
                data=chunk, block_number=number, invoke_id_and_priority=invoke
            ).to_bytes()
        chunk = association.blocks[number - 1]
        if number == len(association.blocks):
            association.blocks = []
            return xdlms.GetResponseLastBlock(
                data=chunk, block_number=number, invoke_id_and_priority=invoke
            ).to_bytes()
        return xdlms.GetResponseWithBlock(
            data=chunk, block_number=number, invoke_id_and_priority=invoke
        ).to_bytes()

    def _next_block(self, association: _Association, request: xdlms.GetRequestNext) -> bytes:
        invoke = request.invoke_id_and_priority
        if not association.blocks:
            error = en.DataAccessResult.NO_LONG_GET_IN_PROGRESS
        elif request.block_number != association.block_sent:
            association.blocks = []
            error = en.DataAccessResult.DATA_BLOCK_NUMBER_INVALID
        else:
            return self._send_block(association, invoke)
        return xdlms.GetResponseLastBlockWithError(
            error=error, block_number=request.block_number, invoke_id_and_priority=invoke
        ).to_bytes()

    def _read(
        self, meter: SimulatedMeter, class_id: int, obis: bytes, attribute: int, raw: bytes
    ) -> bytes:
        objects = self._table(meter)
        if obis not in objects:
            raise _AccessError(en.DataAccessResult.OBJECT_UNDEFINED)
        expected_class, attributes = objects[obis]
        if class_id != expected_class:
            raise _AccessError(en.DataAccessResult.OBJECT_CLASS_INCONSISTENT)
        selective = len(raw) > 12 and raw[12] == 1
        if attribute == 1:
            value: dlms_data.AbstractDlmsData = dlms_data.OctetStringData(obis)
        elif attribute not in attributes:
            raise _AccessError(en.DataAccessResult.OBJECT_UNDEFINED)
        elif selective:
            if (class_id, attribute) != (en.CosemInterface.PROFILE_GENERIC, 2):
                raise _AccessError(en.DataAccessResult.OTHER_REASON)
            return self._layout(meter).buffer(*_range(raw))
        else:
            answer = attributes[attribute]()
            return answer if isinstance(answer, bytes) else answer.to_bytes()
        return value.to_bytes()

    def variant_of(self, meter: SimulatedMeter) -> DlmsVariant:
        """The meter's layout and misbehaviours (``serve(variant=...)``; default: interval)."""
        variant = self._variants.get(id(meter))
        if variant is None:
            variant = self._variants[id(meter)] = DlmsVariant()
        return variant

    def _layout(self, meter: SimulatedMeter) -> Layout:
        self._table(meter)
        return self._layouts[id(meter)]

    def _table(self, meter: SimulatedMeter) -> dict[bytes, tuple[int, dict[int, Getter]]]:
        """The meter's object table, built once per meter object (its getters read live)."""
        entry = self._tables.get(id(meter))
        if entry is None or entry[0] is not meter:
            layout = self._layouts[id(meter)] = Layout(meter, self.variant_of(meter))
            entry = self._tables[id(meter)] = (meter, _objects(meter, layout))
        return entry[1]

    # --- SET ----------------------------------------------------------------------------

    def _set(
        self, association: _Association, meter: SimulatedMeter, request: xdlms.SetRequestNormal
    ) -> bytes:
        target = request.cosem_attribute
        result = en.DataAccessResult.SUCCESS
        if association.level != AccessLevel.CONFIGURE:
            result = en.DataAccessResult.READ_WRITE_DENIED  # art. 17: level 1 only reads
        elif (int(target.interface), target.instance.to_bytes(), target.attribute) != (
            en.CosemInterface.CLOCK,
            ob.CLOCK,
            2,
        ):
            result = en.DataAccessResult.READ_WRITE_DENIED
        else:
            data = bytes(request.data)
            if len(data) != 14 or data[:2] != b"\x09\x0c":
                result = en.DataAccessResult.TYPE_UNMATCHED
            else:
                try:
                    when = ob.decode_datetime(data[2:])
                except Exception:  # noqa: BLE001 - not a date-time the clock can take
                    result = en.DataAccessResult.TYPE_UNMATCHED
                else:
                    meter.set_clock(when)
        return xdlms.SetResponseNormal(
            result=result, invoke_id_and_priority=request.invoke_id_and_priority
        ).to_bytes()


# --- encoded once -----------------------------------------------------------------------

_REQUESTS = [0]  # requests answered by this process: "the same request" for live values
_RLRE = acse.ReleaseResponse(reason=en.ReleaseResponseReason.NORMAL).to_bytes()
_PARSED: dict[bytes, object] = {}
_PARSED_LIMIT = 4096


def _parse(apdu: bytes) -> object:
    """dlms-cosem's parse of a request, remembered by its bytes.

    A fleet's clients send the same requests session after session (the AARQ of a level,
    the identity list, the clock, the registers; the profile range changes once an hour),
    and the library's attrs-based parse was about half of the simulator's CPU per session.
    The parsed requests are only read, never changed. Bounded: cleared when full.
    """
    key = bytes(apdu)
    request = _PARSED.get(key)
    if request is None:
        request = XDlmsApduFactory.apdu_from_bytes(key)
        if len(_PARSED) >= _PARSED_LIMIT:
            _PARSED.clear()
        _PARSED[key] = request
    return request


_ADDRESSES: dict[bytes, tuple[tuple[int, bytes, int, bool], ...]] = {}


def _addresses(
    raw: bytes, request: xdlms.GetRequestNormal | xdlms.GetRequestWithList
) -> tuple[tuple[int, bytes, int, bool], ...]:
    """(class id, OBIS, attribute, with selection) of each attribute a GET names, taken from
    the parsed request once per request bytes (as the parse itself, :func:`_parse`)."""
    key = bytes(raw)
    found = _ADDRESSES.get(key)
    if found is None:
        if isinstance(request, xdlms.GetRequestWithList):
            named = [
                (item.attribute, item.access_selection is not None)
                for item in request.cosem_attributes_with_selection
            ]
        else:
            named = [(request.cosem_attribute, request.access_selection is not None)]
        found = tuple(
            (int(t.interface), t.instance.to_bytes(), t.attribute, selective)
            for t, selective in named
        )
        if len(_ADDRESSES) >= _PARSED_LIMIT:
            _ADDRESSES.clear()
        _ADDRESSES[key] = found
    return found


def _bits(conformance: Conformance) -> tuple[bool, ...]:
    return tuple(getattr(conformance, n) for n in Conformance.conformance_bit_position)


@functools.lru_cache(maxsize=64)
def _granted(proposed: tuple[bool, ...], supported: tuple[bool, ...]) -> Conformance:
    """The conformance granted: the client's proposal ∩ what this server implements.
    Shared between associations, so never changed."""
    names = Conformance.conformance_bit_position
    return Conformance(**{n: p and s for n, p, s in zip(names, proposed, supported, strict=True)})


@functools.lru_cache(maxsize=64)
def _lls_aare(
    mechanism: object, proposed: tuple[bool, ...], supported: tuple[bool, ...], max_pdu: int
) -> bytes:
    conformance = _granted(proposed, supported)
    return acse.ApplicationAssociationResponse(
        result=en.AssociationResult.ACCEPTED,
        result_source_diagnostics=en.AcseServiceUserDiagnostics.NULL,
        authentication=mechanism,
        authentication_value=None,
        ciphered=False,
        system_title=None,
        user_information=acse.UserInformation(
            content=xdlms.InitiateResponse(
                negotiated_conformance=conformance, server_max_receive_pdu_size=max_pdu
            )
        ),
    ).to_bytes()


class _AccessError(Exception):
    def __init__(self, result: en.DataAccessResult) -> None:
        super().__init__(result.name)
        self.result = result


class _WrapperConnection(asyncio.Protocol):
    """One client connection over the wrapper.

    Frames are cut from the byte stream as they arrive and answered at once, in order, on
    the event loop's callback: no task and no stream reader per request (the simulator
    shares the CPU with the collector it serves). An answer that must wait (latency or
    jitter) goes, with every request after it, through a task that answers them in turn.
    """

    def __init__(self, server: DlmsServer) -> None:
        self.server = server
        self.association = _Association()
        self.answered = 0
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.backlog: list[tuple[int, int, bytes]] | None = None  # while answers wait
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server._connections.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.server._connections.discard(self.transport)
        if self.task is not None:
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while len(buffer) >= 8:
            length = int.from_bytes(buffer[6:8], "big")
            if len(buffer) < 8 + length:
                return
            try:
                source, destination, apdu = unwrap(bytes(buffer[: 8 + length]))
            except WrapperError:
                self._close()
                return
            del buffer[: 8 + length]
            if self.backlog is not None:
                self.backlog.append((source, destination, apdu))
            elif not self._request(source, destination, apdu):
                return

    def _request(self, source: int, destination: int, apdu: bytes) -> bool:
        """Answer one request now, or start the backlog if its answer must wait."""
        meter = self.server.meters.get(destination)
        if meter is None:
            self._close()  # no such logical device: IEC 62056-47 discards; we hang up
            return False
        if meter.faults.latency or meter.faults.jitter:
            self.backlog = [(source, destination, apdu)]
            self.task = asyncio.get_running_loop().create_task(self._drain_backlog())
            self.server._tasks.add(self.task)
            return False
        self.server.stats.requests += 1
        answer = self.server._answer(self.association, meter, source, apdu)
        return self._deliver(meter.faults.decide(self.answered), source, destination, answer)

    async def _drain_backlog(self) -> None:
        assert self.backlog is not None
        try:
            while self.backlog:
                source, destination, apdu = self.backlog.pop(0)
                meter = self.server.meters.get(destination)
                if meter is None:
                    self._close()
                    return
                self.server.stats.requests += 1
                answer = self.server._answer(self.association, meter, source, apdu)
                action = await meter.faults.before_answer(self.answered)
                if not self._deliver(action, source, destination, answer):
                    return
        finally:
            if self.task is not None:
                self.server._tasks.discard(self.task)
            self.backlog = None
            self.task = None

    def _deliver(self, action: FaultAction, source: int, destination: int, answer: bytes) -> bool:
        if action is FaultAction.SILENT:
            return True
        if action is FaultAction.DROP:
            self._close()
            return False
        if action is FaultAction.CORRUPT:
            # A damaged APDU inside a well-formed wrapper (length consistent), so the client
            # can tell a corrupt frame from a link that stalls.
            answer = b"\xff" + bytes(b ^ 0x5A for b in answer[1 : max(2, len(answer) // 2)])
        assert self.transport is not None
        self.transport.write(wrap(destination, source, answer))
        self.answered += 1
        return True

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.buffer.clear()


def _exception(state: en.StateException, service: en.ServiceException) -> bytes:
    return xdlms.ExceptionResponse(state_error=state, service_error=service).to_bytes()


# --- the object model -------------------------------------------------------------------

# A getter returns Data, or its encoding when that never changes (encoded once: cheaper).
Getter = Callable[[], dlms_data.AbstractDlmsData | bytes]


def _objects(meter: SimulatedMeter, layout: Layout) -> dict[bytes, tuple[int, dict[int, Getter]]]:
    """OBIS -> (class id, attribute getters), from the Blue Book table in ``objects.py``.

    Getters read the meter when called (identity, period and depth may change under a test);
    only values that cannot change are encoded here once. Attribute 1 (logical name) is
    generic.
    """
    variant = layout.variant
    columns = layout.capture_objects()
    status = dlms_data.UnsignedIntegerData(0).to_bytes()
    time_zone = dlms_data.LongData(300).to_bytes()  # same sign as the deviation: UTC−5 -> +300
    ldn = (variant.logical_device_name or f"CGM{meter.identity.serial}").encode()

    def last_interval(channel: Channel) -> dlms_data.AbstractDlmsData:
        now = meter.real_now()
        period = meter.capture_period
        ts = int(now.timestamp()) // int(period.total_seconds()) * int(period.total_seconds())
        entries = meter.profile(datetime.fromtimestamp(ts, UTC) - period, now)
        if not entries:
            return dlms_data.NullData(None)
        return dlms_data.DoubleLongUnsignedData(_wh(entries[-1].values[channel]))

    last_registers: list[Any] = [-1, None]  # (request number, values)

    def registers_now() -> dict[Channel, float]:
        """The registers, read once for all four channels of one request."""
        if last_registers[0] != _REQUESTS[0]:
            last_registers[:] = [_REQUESTS[0], meter.registers()]
        return last_registers[1]

    def in_memory() -> int:
        now = meter.real_now()
        return len(meter.profile(now - meter.capture_period * (meter.depth + 1), now))

    objects: dict[bytes, tuple[int, dict[int, Getter]]] = {
        ob.LOGICAL_DEVICE_NAME: (ob.DATA, {2: lambda: dlms_data.OctetStringData(ldn)}),
        ob.MANUFACTURER: (
            ob.DATA,
            {2: lambda: dlms_data.VisibleStringData(meter.identity.manufacturer)},
        ),
        ob.MODEL: (ob.DATA, {2: lambda: dlms_data.VisibleStringData(meter.identity.model)}),
        ob.FIRMWARE: (ob.DATA, {2: lambda: dlms_data.VisibleStringData(meter.identity.firmware)}),
        ob.STATUS: (ob.DATA, {2: lambda: status}),
        ob.CLOCK: (
            ob.CLOCK_CLASS,
            {
                2: lambda: dlms_data.OctetStringData(ob.encode_datetime(meter.clock())),
                3: lambda: time_zone,
            },
        ),
        ob.LOAD_PROFILE: (
            ob.PROFILE_GENERIC,
            {
                2: lambda: layout.buffer(None, None),
                3: lambda: columns,
                4: lambda: dlms_data.DoubleLongUnsignedData(
                    int(meter.capture_period.total_seconds())
                ),
                5: lambda: dlms_data.EnumData(1),  # sort method: FIFO
                7: lambda: dlms_data.DoubleLongUnsignedData(in_memory()),
                8: lambda: dlms_data.DoubleLongUnsignedData(meter.depth),
            },
        ),
        ob.DEMAND: (ob.DEMAND_REGISTER, {4: lambda: ob.scaler_unit(0, ob.W)}),
        ob.VOLTAGE_L1: (ob.REGISTER, {3: lambda: ob.scaler_unit(-1, ob.V)}),
    }
    if variant.serial_object:
        objects[ob.SERIAL] = (
            ob.DATA,
            {2: lambda: dlms_data.OctetStringData(meter.identity.serial.encode())},
        )
    for channel in ob.C_OF:
        # Wh / varh with scaler 0: the meter's 1 Wh resolution, as real meters report.
        def unit(ch: Channel = channel) -> bytes:
            return ob.scaler_unit(0, ob.UNIT_OF[ch])

        objects[ob.energy(channel, 8)] = (
            ob.REGISTER,
            {
                2: lambda ch=channel: dlms_data.UnsignedLong64Data(_wh(registers_now()[ch])),
                3: unit,
            },
        )
        for tariff in range(1, variant.tariffs + 1):
            objects[ob.energy(channel, 8, tariff)] = (ob.REGISTER, {3: unit})
        objects[ob.energy(channel, 29)] = (
            ob.REGISTER,
            {2: lambda ch=channel: last_interval(ch), 3: unit},
        )
    return objects


def _wh(kwh: float) -> int:
    return round(kwh * 1000)


_RANGES: dict[bytes, tuple[datetime, datetime]] = {}


def _range(raw: bytes) -> tuple[datetime, datetime]:
    """[from, to] (inclusive, aware UTC) of a RangeDescriptor on the profile clock.

    Parsed from the raw request with dlms-cosem's data parser and date-time decoder (not the
    driver's), checking the restricting object is the clock's time attribute. Remembered by
    the request's bytes, as requests are (:func:`_parse`): every meter is asked the same hour.
    """
    key = bytes(raw)
    found = _RANGES.get(key)
    if found is None:
        found = _parse_range(key)
        if len(_RANGES) >= _PARSED_LIMIT:
            _RANGES.clear()
        _RANGES[key] = found
    return found


def _parse_range(raw: bytes) -> tuple[datetime, datetime]:
    if raw[13] != 1:  # only the range descriptor (entry descriptor not implemented)
        raise _AccessError(en.DataAccessResult.OTHER_REASON)
    try:
        parser = dlms_data.DlmsDataParser()
        restricting, start, end, _selected = parser.parse(bytes(raw[14:]), limit=1)[0].value
        class_id, obis, attribute, _index = restricting.to_python()
        if (class_id, bytes(obis), attribute) != (ob.CLOCK_CLASS, ob.CLOCK, 2):
            raise _AccessError(en.DataAccessResult.OTHER_REASON)
        low = ob.decode_datetime(bytes(start.value))
        high = ob.decode_datetime(bytes(end.value))
    except _AccessError:
        raise
    except Exception as exc:  # noqa: BLE001 - malformed selector
        raise _AccessError(en.DataAccessResult.TYPE_UNMATCHED) from exc
    return low, high


async def serve(
    meters: Mapping[int, SimulatedMeter] | SimulatedMeter,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    max_pdu_size: int = DEFAULT_MAX_PDU,
    security: Mapping[int, MeterSecurity] | MeterSecurity | None = None,
    framing: str = "wrapper",
    hdlc_lower: int | None = None,
    hdlc_address_size: int = 1,
    variant: Mapping[int, DlmsVariant] | DlmsVariant | None = None,
) -> DlmsServer:
    """Start serving ``meters`` (server wPort -> meter; a bare meter is served at wPort 1).

    ``port=0`` picks a free port: read it back from ``server.port``. ``security`` gives the
    mechanism of each level per wPort (a bare :class:`MeterSecurity` applies to wPort 1).
    ``framing="hdlc"`` serves HDLC instead of the wrapper: the wPort becomes the HDLC upper
    address, ``hdlc_lower``/``hdlc_address_size`` the device's lower address and its size.
    ``variant`` gives each meter's object layout and misbehaviours (:class:`DlmsVariant`; a
    bare one applies to every meter served).
    """
    if isinstance(meters, SimulatedMeter):
        meters = {ob.MANAGEMENT_LOGICAL_DEVICE: meters}
    if isinstance(security, MeterSecurity):
        security = {ob.MANAGEMENT_LOGICAL_DEVICE: security}
    if isinstance(variant, DlmsVariant):
        variant = dict.fromkeys(meters, variant)
    server = DlmsServer(
        meters, max_pdu_size, security, framing, hdlc_lower, hdlc_address_size, variant
    )
    await server.start(host, port)
    return server
