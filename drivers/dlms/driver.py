"""DLMS/COSEM driver: logical-name association over the IEC 62056-47 TCP wrapper, on asyncio.

The protocol state (AARQ/AARE, GET/SET, blocks, RLRQ) is dlms-cosem's sans-I/O
``DlmsConnection``; this module only moves its bytes and turns DLMS outcomes into the
driver errors of :mod:`drivers.base`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import structlog
from dlms_cosem import cosem as lib_cosem
from dlms_cosem import dlms_data
from dlms_cosem import enumerations as en
from dlms_cosem import state as dlms_state
from dlms_cosem.connection import DlmsConnection, XDlmsApduFactory
from dlms_cosem.cosem.capture_object import CaptureObject as LibCaptureObject
from dlms_cosem.cosem.selective_access import RangeDescriptor
from dlms_cosem.protocol import acse, xdlms
from dlms_cosem.protocol.xdlms.conformance import Conformance

from drivers.base import (
    AccessDenied,
    AccessLevel,
    AuthenticationFailed,
    Channel,
    ClockReading,
    ConnectionFailed,
    Credentials,
    Driver,
    DriverError,
    Endpoint,
    MeterIdentity,
    MeterSession,
    MeterTimeout,
    NotSupported,
    ProfileColumn,
    ProfileConfig,
    ProfileEntry,
    ProtocolError,
    RegisterValue,
    SessionEvent,
    utcnow,
)
from drivers.cumulative import CumulativeRow, profile_entries, rollover_value

from . import axdr, cosem
from .access import ACCESS_KEYS, AccessParams, Association, AuthenticationRefused, HdlcError
from .security import InvocationCounterStore
from .transport import WrapperError

log = logging.getLogger(__name__)


def _quiet_dlms_cosem() -> None:
    """dlms-cosem logs every APDU at INFO through structlog: keep only warnings and up.

    The library's module loggers are replaced by proxies that still use the application's
    structlog configuration but filter below WARNING; the stdlib logger is set too in case
    structlog is routed through ``logging``.
    """
    import dlms_cosem.client
    import dlms_cosem.connection
    import dlms_cosem.hdlc.connection
    import dlms_cosem.hdlc.state
    import dlms_cosem.io
    import dlms_cosem.state

    # ``.bind()`` resolves structlog's lazy proxy once: the proxy would otherwise build a new
    # bound logger on every call (a measured 5 % of the collector's CPU).
    quiet = structlog.wrap_logger(
        None, wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING)
    ).bind()
    for module in (
        dlms_cosem.connection,
        dlms_cosem.state,
        dlms_cosem.client,
        dlms_cosem.io,
        dlms_cosem.hdlc.connection,
        dlms_cosem.hdlc.state,
    ):
        module.LOG = quiet
    logging.getLogger("dlms_cosem").setLevel(logging.WARNING)


_quiet_dlms_cosem()

_AUTH_DIAGNOSTICS = {
    en.AcseServiceUserDiagnostics.AUTHENTICATION_FAILED,
    en.AcseServiceUserDiagnostics.AUTHENTICATION_REQUIRED,
    en.AcseServiceUserDiagnostics.AUTHENTICATION_MECHANISM_NAME_REQUIRED,
    en.AcseServiceUserDiagnostics.AUTHENTICATION_MECHANISM_NAME_NOT_RECOGNIZED,
}
_HLS = en.AuthenticationMechanism.HLS
_DENIED = {en.DataAccessResult.READ_WRITE_DENIED, en.DataAccessResult.SCOPE_OF_ACCESS_VIOLATED}
_UNDEFINED = {
    en.DataAccessResult.OBJECT_UNDEFINED,
    en.DataAccessResult.OBJECT_UNAVAILABLE,
    en.DataAccessResult.OBJECT_CLASS_INCONSISTENT,
}


def _parse_tz(value: Any) -> timezone:
    """``timezone`` param: minutes east of UTC (``-300``) or ``"-05:00"``."""
    if isinstance(value, timezone):
        return value
    if isinstance(value, int):
        return timezone(timedelta(minutes=value))
    text = str(value).strip()
    sign = -1 if text.startswith("-") else 1
    hours, _, minutes = text.lstrip("+-").partition(":")
    return timezone(sign * timedelta(hours=int(hours), minutes=int(minutes or 0)))


@dataclass(frozen=True)
class DlmsParams:
    """Protocol parameters of one meter (see README.md)."""

    server_address: int = cosem.MANAGEMENT_LOGICAL_DEVICE
    client_address: int | None = None
    timezone: timezone = cosem.COLOMBIA
    max_pdu_size: int = 0xFFFF
    access: AccessParams = AccessParams()  # authentication per level, framing (access.py)
    identity: str = "auto"  # auto (serial, else logical device name) | serial | ldn
    register_max: float | None = None  # kWh/kvarh where cumulative columns wrap
    register_digits: int | None = None  # raw counter digits (wrap = 10^digits × 10^scaler)

    _KEYS = frozenset(
        {
            "server_address",
            "client_address",
            "timezone",
            "max_pdu_size",
            "identity",
            "register_max",
            "register_digits",
        }
    )

    @classmethod
    def known_keys(cls) -> frozenset[str]:
        return cls._KEYS | ACCESS_KEYS | _CGM_PARAMS

    @classmethod
    def from_mapping(cls, params: Mapping[str, Any] | None) -> DlmsParams:
        params = dict(params or {})
        unknown = set(params) - cls._KEYS - ACCESS_KEYS - _CGM_PARAMS
        if unknown:
            raise ValueError(f"unknown DLMS parameters: {sorted(unknown)}")
        client = params.get("client_address")
        identity = str(params.get("identity", "auto")).lower()
        if identity not in ("auto", "serial", "ldn"):
            raise ValueError(f"identity must be auto, serial or ldn, not {identity!r}")
        register_max = params.get("register_max")
        digits = params.get("register_digits")
        return cls(
            server_address=int(params.get("server_address", cosem.MANAGEMENT_LOGICAL_DEVICE)),
            client_address=None if client is None else int(str(client), 0),
            timezone=_parse_tz(params.get("timezone", "-05:00")),
            max_pdu_size=int(params.get("max_pdu_size", 0xFFFF)),
            access=AccessParams.from_mapping(params),
            identity=identity,
            register_max=None if register_max is None else float(register_max),
            register_digits=None if digits is None else int(digits),
        )

    def client_sap(self, credentials: Credentials) -> int:
        """Explicit param, else ``Credentials.client``, else the level's conventional SAP."""
        if self.client_address is not None:
            return self.client_address
        if credentials.client:
            return int(credentials.client, 0)
        if credentials.level == AccessLevel.CONFIGURE:
            return cosem.MANAGEMENT_CLIENT
        return cosem.READING_CLIENT


def _params(params: Mapping[str, Any] | None) -> DlmsParams:
    """:meth:`DlmsParams.from_mapping`, once per distinct mapping (a meter's params are the
    same every hour; parsing them was ~3 % of a session). Frozen, so shared."""
    try:
        key = tuple(sorted((params or {}).items()))
        hash(key)
    except TypeError:  # an unhashable value: parsed every time, with the same checks
        return DlmsParams.from_mapping(params)
    return _params_of(key)


@functools.lru_cache(maxsize=65536)
def _params_of(key: tuple[tuple[str, Any], ...]) -> DlmsParams:
    return DlmsParams.from_mapping(dict(key))


@dataclass(frozen=True)
class _ProfileLayout:
    columns: tuple[cosem.CaptureObject, ...]
    period: timedelta
    depth: int
    roles: tuple[cosem.ColumnRole, ...]  # one per column, in column order
    scalers: Mapping[int, tuple[int, int]]  # column index -> (scaler, unit), energy columns

    # Computed once per layout: a layout is shared by the sessions that read the same
    # configuration (see _profile_layout).
    @functools.cached_property
    def cumulative(self) -> bool:
        return any(r.use is cosem.Use.CUMULATIVE for r in self.roles)

    @functools.cached_property
    def channels(self) -> tuple[Channel, ...]:
        used = {r.channel for r in self.roles if r.use in _ENERGY and r.channel is not None}
        return tuple(ch for ch in Channel if ch in used)

    @functools.cached_property
    def description(self) -> tuple[ProfileColumn, ...]:
        return _describe(self)


_ENERGY = (cosem.Use.INTERVAL, cosem.Use.CUMULATIVE)
# Layouts by the one-frame list answer they were read from (see _profile_layout). Only read.
_LAYOUTS: dict[bytes, _ProfileLayout] = {}
_LAYOUT_LIMIT = 1024
# Identities by the one-frame identity answer and the ``identity`` param (see _identify).
_IDENTITIES: dict[tuple[bytes | None, str], tuple[str, str, MeterIdentity]] = {}
_IDENTITY_LIMIT = 100_000
# Not the driver's, accepted so that a registry entry may carry them: the meter ratings the
# CGM's plausibility guard reads (cgm/collection/plausibility.py).
_CGM_PARAMS = frozenset({"max_current_a", "rated_current_a", "nominal_voltage_v"})
# Unsigned counter widths by A-XDR tag: where a cumulative register wraps by default.
_COUNTER_BITS = {17: 8, 18: 16, 6: 32, 21: 64, 15: 7, 16: 15, 5: 31, 20: 63}
# Caps on a GET-with-block reassembly (see _blocks). A profile read is capped by its depth.
MAX_ANSWER_BYTES = 64 * 1024  # anything but a profile buffer: identity, scalers, lists
_ROW_CELL_BYTES = 18  # generous encoded size of one profile cell (date-time: 14)


# One item of a GET-with-list answer: the encoded A-XDR Data, or the meter's refusal.
_ListResult = dlms_data.AbstractDlmsData | en.DataAccessResult


class ColumnHints:
    """Which load-profile columns a meter had last time, to ask for their scalers early.

    Keyed by endpoint, server address and serial (a replaced meter has another serial). A
    hint is never trusted as data: the capture objects are re-read in the same GET-with-list
    as the scalers it names, and a mismatch costs one more round trip, never a wrong value.
    A meter without a hint of its own (first contact of this process: a restart, or a meter
    another collector read last hour) is offered ``last``, the layout most recently read from
    any meter, under the same check: a fleet is mostly of a few models. Bounded: the oldest
    hints go first when it is full.
    """

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._hints: dict[tuple[str, int, int, str], tuple[cosem.CaptureObject, ...]] = {}
        self.last: tuple[cosem.CaptureObject, ...] | None = None  # from any meter
        # Logical devices whose GET-with-list answer was malformed, refused or partial: read
        # one by one from then on (keyed by host, port, server address; bounded like hints).
        self._no_list: dict[tuple[str, int, int], None] = {}

    def list_refused(self, key: tuple[str, int, int]) -> bool:
        return key in self._no_list

    def refuse_list(self, key: tuple[str, int, int]) -> None:
        self._no_list[key] = None
        while len(self._no_list) > self.limit:
            del self._no_list[next(iter(self._no_list))]

    def get(self, key: tuple[str, int, int, str]) -> tuple[cosem.CaptureObject, ...] | None:
        return self._hints.get(key)

    def put(self, key: tuple[str, int, int, str], columns: tuple[cosem.CaptureObject, ...]) -> None:
        self._hints.pop(key, None)
        self._hints[key] = columns
        self.last = columns
        while len(self._hints) > self.limit:
            del self._hints[next(iter(self._hints))]

    def forget(self, key: tuple[str, int, int, str]) -> None:
        self._hints.pop(key, None)

    def __len__(self) -> int:
        return len(self._hints)


class DlmsSession(MeterSession):
    """One association with one logical device. Not reusable after a transport failure."""

    def __init__(
        self,
        endpoint: Endpoint,
        credentials: Credentials,
        timeout: float,
        params: DlmsParams,
        hints: ColumnHints | None = None,
        counters: InvocationCounterStore | None = None,
    ) -> None:
        super().__init__(endpoint, credentials, timeout)
        self.params = params
        self._hints = hints if hints is not None else ColumnHints()
        self._serial: str | None = None  # once identified: the key of the column hints
        self.identity_source: str | None = None  # OBIS the serial came from, once identified
        self._access = Association.create(
            params.access,
            credentials,
            params.client_sap(credentials),
            params.server_address,
            params.max_pdu_size,
            counters,
        )
        self._transport = self._access.transport
        self._conn = self._access.conn
        self._associated = False
        self._broken: str | None = None
        self._layout: _ProfileLayout | None = None
        self.requests_sent = 0  # APDUs sent in this session (observability, tests)
        self.blocks_received = 0  # GET-with-block blocks in this session (observability)
        self.negotiated_pdu_size: int | None = None
        self._release: bytes | None = None  # the RLRQ, encoded once per AARE (lean LLS)
        self._list_body: bytes | None = None  # the last list answer in one frame, if any

    # --- association --------------------------------------------------------------------

    async def _open(self) -> None:
        try:
            await self._transport.open(self.endpoint.host, self.endpoint.port)
        except HdlcError as exc:
            raise ProtocolError(f"HDLC link setup: {exc}", endpoint=self.endpoint) from exc
        except (OSError, asyncio.IncompleteReadError) as exc:
            raise ConnectionFailed(f"cannot connect: {exc!r}", endpoint=self.endpoint) from exc
        conn = self._conn
        # LLS without ciphering: the AARQ is the same bytes every session (no challenge),
        # so it is encoded once per secret; the AARE comes back through the lean parser.
        lean = self._access.mechanism == "lls" and not conn.use_protection
        answer = await self._exchange(_lls_aarq(conn) if lean else conn.get_aarq())
        aare = answer.apdu if isinstance(answer, _Aare) else answer
        if isinstance(aare, xdlms.ExceptionResponse):
            raise ProtocolError(f"association refused: {aare!r}", endpoint=self.endpoint)
        if not isinstance(aare, acse.ApplicationAssociationResponse):
            raise ProtocolError(f"expected an AARE, got {type(aare).__name__}")
        if aare.result != en.AssociationResult.ACCEPTED:
            diagnostic = aare.result_source_diagnostics
            if diagnostic in _AUTH_DIAGNOSTICS:
                raise AuthenticationFailed(
                    f"meter refused the level-{int(self.credentials.level)} secret "
                    f"({diagnostic.name})",
                    endpoint=self.endpoint,
                )
            raise ProtocolError(
                f"association rejected: {aare.result.name} / {diagnostic!r}",
                endpoint=self.endpoint,
            )
        if isinstance(answer, _Aare):
            if aare.authentication is not None and aare.authentication >= _HLS:
                raise ProtocolError(
                    f"meter asks for HLS ({aare.authentication.name}) on an LLS association",
                    endpoint=self.endpoint,
                )
            # What DlmsConnection.next_event does with an accepted LLS AARE.
            conn.update_meter_info(aare)
            conn.update_negotiated_parameters(aare)
            conn.state.current_state = dlms_state.READY
            self._release = answer.release
        if self._access.needs_hls_pass:
            try:
                await self._access.hls_pass(self._exchange)
            except (AuthenticationRefused, ProtocolError) as exc:
                raise AuthenticationFailed(
                    f"level-{int(self.credentials.level)} HLS ({self._access.mechanism}) "
                    f"failed: {exc}",
                    endpoint=self.endpoint,
                ) from exc
        self._associated = True
        self.negotiated_pdu_size = self._conn.max_pdu_size
        conformance = self._conn.conformance
        if not (conformance.get and conformance.selective_access):
            raise NotSupported("meter does not offer GET with selective access")

    async def _abort(self) -> None:
        await self._transport.close()

    async def _close(self) -> None:
        try:
            if self._associated and self._broken is None and self._transport.is_open:
                conn, lean = self._conn, self._lean
                self._associated = False
                if not lean:
                    await self._exchange(conn.get_rlrq())
                else:
                    await self._exchange(
                        self._release
                        or _release_request(conn.conformance.to_bytes(), conn.max_pdu_size)
                    )
        finally:
            await self._transport.close()

    # --- one request, one answer --------------------------------------------------------

    async def _exchange(self, event: Any, *, recover: bool = False) -> Any:
        """Send one APDU, return the parsed answer; map transport failures to driver errors.

        Anything that interrupts an exchange (timeout, dropped link, a frame that does not
        parse) leaves the association out of step, so the session is marked broken. With
        ``recover``, a whole wrapper frame whose APDU does not parse (a malformed GET-with-list
        answer) is a ``ProtocolError`` that keeps the session: one request got one answer, so
        the association is still in step and the caller may ask again another way.
        """
        if self._broken is not None:
            raise ConnectionFailed(f"session unusable: {self._broken}", endpoint=self.endpoint)
        lean = isinstance(event, bytes)
        ok = False
        try:
            self.requests_sent += 1
            if lean:
                out = event
            else:
                try:
                    await self._access.before_send()
                    out = self._conn.send(event)
                except Exception as exc:  # noqa: BLE001 - the association is not in a state for it
                    raise ProtocolError(f"cannot send {type(event).__name__}: {exc}") from exc
            try:
                answer = await self._transport.request(out)
            except (WrapperError, HdlcError) as exc:
                raise ProtocolError(f"bad frame: {exc}", endpoint=self.endpoint) from exc
            except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
                raise ConnectionFailed(f"connection lost: {exc!r}", endpoint=self.endpoint) from exc
            try:
                if lean:
                    parsed = _get_answer(answer)
                else:
                    self._conn.receive_data(answer)
                    parsed = self._conn.next_event()
            except Exception as exc:  # noqa: BLE001 - any parse failure is a corrupt frame
                if not lean:
                    self._conn.clear_buffer()
                if recover:
                    # dlms-cosem stays in AWAITING_GET_RESPONSE after a parse failure.
                    if not lean:
                        self._conn.state.current_state = dlms_state.READY
                    ok = True
                raise ProtocolError(
                    f"corrupt APDU {answer[:16].hex()}…: {exc!r}", endpoint=self.endpoint
                ) from exc
            ok = True
            return parsed
        except BaseException as exc:
            if not ok:
                self._broken = type(exc).__name__
                await self._transport.close()
            raise

    async def _get(
        self,
        class_id: int,
        obis: bytes,
        attribute: int,
        selection: tuple[datetime, datetime] | None = None,
        limit: int = MAX_ANSWER_BYTES,
    ) -> bytes:
        """GET one attribute (following GET-with-block to the last block); raw A-XDR Data.

        ``limit``: the most bytes this answer can honestly take (see :meth:`_blocks`).
        ``selection``: a range (from, to) on the profile clock, in the meter's zone.
        """
        what = f"{cosem.obis_str(obis)}/{attribute}"
        if self._lean:
            request: Any = (
                _get_request(class_id, obis, attribute)
                if selection is None
                else _range_request(class_id, obis, attribute, *selection, *_offsets(selection))
            )
        else:
            request = xdlms.GetRequestNormal(
                cosem_attribute=_attribute(class_id, obis, attribute),
                access_selection=None if selection is None else _range(*selection),
            )
        answer = await self._exchange(request)
        if isinstance(answer, _Normal):
            return answer.data
        if isinstance(answer, xdlms.GetResponseNormal):
            return bytes(answer.data)
        return await self._blocks(what, answer, limit)

    async def _blocks(self, what: str, answer: Any, limit: int = MAX_ANSWER_BYTES) -> bytes:
        """The raw data of a GET answered in blocks (asking for each next block).

        Bounded: at most ``limit`` bytes (at least one negotiated PDU) in at most
        ``limit / min(PDU, 256) + 1`` blocks. A meter that goes on sending blocks beyond that
        (a firmware fault seen to take a collector from 79 MB to 2.2 GB in 10 s) ends in a
        ``ProtocolError``, and the session is closed: it is mid-transfer, out of step.
        """
        pdu = self.negotiated_pdu_size or self.params.max_pdu_size
        limit = max(limit, pdu)
        max_blocks = -(-limit // max(1, min(pdu, 256))) + 1
        data = bytearray()
        expected_block = 1
        while True:
            if isinstance(
                answer, xdlms.GetResponseNormalWithError | xdlms.GetResponseLastBlockWithError
            ):
                raise self._access_error(what, answer.error)
            if isinstance(answer, xdlms.ExceptionResponse):
                raise ProtocolError(f"GET {what}: exception {answer!r}", endpoint=self.endpoint)
            if isinstance(answer, _Block) or isinstance(
                answer, xdlms.GetResponseWithBlock | xdlms.GetResponseLastBlock
            ):
                if answer.block_number != expected_block:
                    raise ProtocolError(
                        f"GET {what}: block {answer.block_number}, expected {expected_block}",
                        endpoint=self.endpoint,
                    )
                self.blocks_received += 1
                if len(data) + len(answer.data) > limit or expected_block > max_blocks:
                    self._broken = "block transfer beyond its bound"
                    await self._transport.close()
                    raise ProtocolError(
                        f"GET {what}: block {expected_block} would take the answer past "
                        f"{limit} bytes / {max_blocks} blocks; transfer abandoned",
                        endpoint=self.endpoint,
                    )
                data.extend(answer.data)
                if isinstance(answer, xdlms.GetResponseLastBlock) or (
                    isinstance(answer, _Block) and answer.last
                ):
                    return bytes(data)
                following = xdlms.GetRequestNext(
                    block_number=answer.block_number,
                    invoke_id_and_priority=answer.invoke_id_and_priority,
                )
                answer = await self._exchange(following.to_bytes() if self._lean else following)
                expected_block += 1
                continue
            raise ProtocolError(f"GET {what}: unexpected {type(answer).__name__}")

    @property
    def _lean(self) -> bool:
        """Whether GETs go out as bytes encoded once and come back through the lean parser
        (:func:`_get_answer`): any association without ciphering. Under HLS-GMAC every APDU
        goes through dlms-cosem's connection, which ciphers and deciphers it."""
        return self._associated and not self._conn.use_protection

    @property
    def _with_list(self) -> bool:
        """Whether the association granted GET-with-list (conformance multiple-references)."""
        return bool(self._associated and self._conn.conformance.multiple_references)

    async def _get_list(self, items: list[tuple[int, bytes, int]]) -> list[_ListResult]:
        """GET several attributes: one GET-with-list round trip when the meter allows it.

        Each result is the decoded Data or the meter's DataAccessResult for that item; the
        caller decides which refusals matter. Without multiple-references (or for a single
        item) the attributes are read one by one with the same result shape. A list answer
        that is malformed, refused or partial falls back to one GET per item in the same
        session, and the driver remembers the logical device so later sessions skip the
        list: a ``list_fallback`` session event, never an aborted session.
        """
        self._list_body = None
        key = (self.endpoint.host, self.endpoint.port, self.params.server_address)
        if self._with_list and len(items) > 1 and not self._hints.list_refused(key):
            try:
                return await self._get_with_list(items)
            except DriverError as exc:
                if self._broken is not None:
                    raise  # the link or the association failed: not the list's fault
                self._hints.refuse_list(key)
                self._event("list_fallback", f"GET-with-list failed ({exc}); reading one by one")
        out: list[_ListResult] = []
        for class_id, obis, attribute in items:
            try:
                out.append(await self._get_value(class_id, obis, attribute))
            except DriverError as exc:
                result = getattr(exc, "result", None)  # set by _access_error only
                if result is None:
                    raise
                out.append(result)
        return out

    async def _get_with_list(self, items: list[tuple[int, bytes, int]]) -> list[_ListResult]:
        self._list_body = None
        what = f"list of {len(items)}"
        if self._lean:
            request: Any = _get_list_request(tuple(items))
        else:
            request = xdlms.GetRequestWithList(
                cosem_attributes_with_selection=[
                    lib_cosem.CosemAttributeWithSelection(_attribute(c, o, a), None)
                    for c, o, a in items
                ]
            )
        answer = await self._exchange(request, recover=True)
        try:
            if isinstance(answer, _List):
                results = list(answer.results)
                self._list_body = answer.body
            elif isinstance(answer, xdlms.GetResponseWithList):
                results = list(answer.response_data)
            else:
                results = _parse_list(await self._blocks(what, answer))
        except DriverError:
            raise
        except Exception as exc:  # noqa: BLE001 - undecodable data is a corrupt frame
            raise ProtocolError(f"GET {what}: {exc!r}", endpoint=self.endpoint) from exc
        if len(results) != len(items):
            raise ProtocolError(
                f"GET {what}: {len(results)} results for {len(items)} attributes",
                endpoint=self.endpoint,
            )
        return results

    def _event(self, kind: str, detail: str) -> None:
        """Record (for cgm to count) and log something this session handled."""
        self.events.append(SessionEvent(kind, detail))
        log.warning(
            "DLMS %s (server %d): %s: %s", self.endpoint, self.params.server_address, kind, detail
        )

    def _checked(self, result: _ListResult, what: str) -> dlms_data.AbstractDlmsData:
        """The Data of one list result; a refusal raises as a normal GET would."""
        if isinstance(result, en.DataAccessResult):
            raise self._access_error(what, result)
        return result

    def _access_error(self, what: str, result: en.DataAccessResult) -> DriverError:
        if result in _DENIED:
            error: DriverError = AccessDenied(f"{what}: {result.name}", endpoint=self.endpoint)
        elif result in _UNDEFINED:
            error = NotSupported(f"{what}: {result.name}", endpoint=self.endpoint)
        else:
            error = DriverError(f"{what}: {result.name}", endpoint=self.endpoint)
        error.result = result  # type: ignore[attr-defined]
        return error

    async def _get_value(self, class_id: int, obis: bytes, attribute: int) -> Any:
        raw = await self._get(class_id, obis, attribute)
        try:
            return cosem.parse_data(raw)
        except Exception as exc:  # noqa: BLE001 - undecodable data is a corrupt frame
            raise ProtocolError(f"{cosem.obis_str(obis)}/{attribute}: {exc!r}") from exc

    # --- identity and clock -------------------------------------------------------------

    async def _identify(self) -> MeterIdentity:
        """Serial from 0.0.96.1.0.255, else the logical device name 0.0.42.0.0.255.

        The LDN is mandatory in every logical device; the serial object is common but
        optional. The ``identity`` parameter pins one (``serial`` or ``ldn``) for a meter
        registered under it; ``auto`` takes the serial where the meter has one.
        Manufacturer, model and firmware are optional (``""`` when absent).
        """
        data = en.CosemInterface.DATA
        wanted = {
            "auto": (cosem.SERIAL, cosem.LOGICAL_DEVICE_NAME),
            "serial": (cosem.SERIAL,),
            "ldn": (cosem.LOGICAL_DEVICE_NAME,),
        }[self.params.identity]
        extra = (cosem.MANUFACTURER, cosem.MODEL, cosem.FIRMWARE)
        results = dict(
            zip(
                wanted + extra,
                await self._get_list([(data, o, 2) for o in wanted + extra]),
                strict=True,
            )
        )
        memo = (self._list_body, self.params.identity)
        known = _IDENTITIES.get(memo) if memo[0] is not None else None
        if known is not None:  # the same answer as before: the same identity
            self._serial, self.identity_source, identity = known
            return identity
        serial = source = None
        for obis in wanted:
            value = self._text(results[obis], obis, required=obis == wanted[-1])
            if value:
                serial, source = value, cosem.obis_str(obis)
                break
        if not serial:
            raise ProtocolError(
                f"meter gives an empty identity ({', '.join(map(cosem.obis_str, wanted))})",
                endpoint=self.endpoint,
            )
        manufacturer, model, firmware = (self._text(results[o], o, required=False) for o in extra)
        self._serial = serial
        self.identity_source = source
        identity = MeterIdentity(serial, manufacturer, model, firmware)
        if memo[0] is not None:
            if len(_IDENTITIES) >= _IDENTITY_LIMIT:
                _IDENTITIES.clear()
            _IDENTITIES[memo] = (serial, source, identity)
        return identity

    def _text(self, result: _ListResult, obis: bytes, *, required: bool) -> str:
        """A Data object's string value; "" for an optional object the meter lacks.

        An octet-string that is not printable text (some LDNs) is given in hex.
        """
        try:
            value = self._checked(result, f"{cosem.obis_str(obis)}/2").to_python()
        except NotSupported:
            if required:
                raise
            return ""
        if isinstance(value, bytes | bytearray):
            try:
                text = bytes(value).decode("utf-8").strip("\x00 ")
            except UnicodeDecodeError:
                return bytes(value).hex()
            return text if text.isprintable() else bytes(value).hex()
        return str(value)

    async def _read_clock(self) -> ClockReading:
        sent_at = utcnow()
        raw = await self._get(en.CosemInterface.CLOCK, cosem.CLOCK, 2)
        received_at = utcnow()
        try:
            meter_time, status = cosem.decode_datetime(_datetime_bytes(raw), self.params.timezone)
        except ValueError as exc:
            raise ProtocolError(f"clock: {exc}", endpoint=self.endpoint) from exc
        return ClockReading(meter_time, sent_at, received_at, status)

    async def _set_clock(self, when: datetime) -> None:
        data = dlms_data.OctetStringData(cosem.encode_datetime(when, self.params.timezone))
        answer = await self._exchange(
            xdlms.SetRequestNormal(
                cosem_attribute=_attribute(en.CosemInterface.CLOCK, cosem.CLOCK, 2),
                data=data.to_bytes(),
            )
        )
        if not isinstance(answer, xdlms.SetResponseNormal):
            raise ProtocolError(f"set clock: unexpected {type(answer).__name__}")
        if answer.result != en.DataAccessResult.SUCCESS:
            raise self._access_error("set clock", answer.result)

    # --- load profile -------------------------------------------------------------------

    def _hint_key(self) -> tuple[str, int, int, str] | None:
        if self._serial is None:
            return None
        return (self.endpoint.host, self.endpoint.port, self.params.server_address, self._serial)

    async def _profile_layout(self) -> _ProfileLayout:
        """Capture objects, period, depth, each column's role and the energy scalers.

        One GET-with-list: attributes 3, 4 and 8 of the profile plus the scalers of the
        columns the meter had last session, or, for a meter without a hint, of the layout
        last read from any meter (:class:`ColumnHints`). If the capture objects read now
        differ from the hint (another model, a reconfigured or replaced meter), the scalers
        of the actual columns are read in a second round trip. The role of each
        column (:func:`cosem.classify`) comes from the capture objects alone, every session.
        """
        if self._layout is not None:
            return self._layout
        pg = en.CosemInterface.PROFILE_GENERIC
        key = self._hint_key()
        own = self._hints.get(key) if key is not None else None
        hint = own
        config = [
            (pg, cosem.LOAD_PROFILE, 3),
            (pg, cosem.LOAD_PROFILE, 4),
            (pg, cosem.LOAD_PROFILE, 8),
        ]
        list_key = (self.endpoint.host, self.endpoint.port, self.params.server_address)
        if hint is None and self._with_list and not self._hints.list_refused(list_key):
            hint = self._hints.last  # another meter's layout, checked like the meter's own
        wanted = _scaler_columns(hint) if hint else ()
        if own is None and wanted:
            try:
                results = await self._get_with_list(
                    config + [(c.class_id, c.obis, 3) for _, c in wanted]
                )
            except DriverError:
                if self._broken is not None:
                    raise
                # A meter may answer badly a list naming objects it lacks: read the
                # configuration as without a hint (its own list fallback applies there).
                hint, wanted = None, ()
                results = await self._get_list(config)
        else:
            results = await self._get_list(config + [(c.class_id, c.obis, 3) for _, c in wanted])
        body = self._list_body
        if body is not None and hint:
            # The same answer to the same list as before: the same layout (it is a function
            # of these bytes when the hint named the columns they hold).
            known = _LAYOUTS.get(body)
            if known is not None and known.columns == hint:
                self._layout = known
                return known
        lp = cosem.obis_str(cosem.LOAD_PROFILE)
        try:
            columns = tuple(
                cosem.CaptureObject.decode(item)
                for item in self._checked(results[0], f"{lp}/3").value
            )
            period = int(self._checked(results[1], f"{lp}/4").to_python())
            depth = int(self._checked(results[2], f"{lp}/8").to_python())
        except DriverError:
            raise
        except Exception as exc:  # noqa: BLE001 - undecodable configuration is corrupt
            raise ProtocolError(f"load profile configuration: {exc!r}") from exc
        if period <= 0:
            raise ProtocolError(f"load profile capture period {period} s")
        if cosem.CLOCK_CAPTURE not in columns:
            raise NotSupported("load profile does not capture the clock")
        scaler_results = results[3:]
        if hint != columns:
            if key is not None:
                self._hints.forget(key)
            wanted = _scaler_columns(columns)
            scaler_results = (
                await self._get_list([(c.class_id, c.obis, 3) for _, c in wanted]) if wanted else []
            )
        roles = _roles(columns)
        scalers: dict[int, tuple[int, int]] = {}
        for (index, column), result in zip(wanted, scaler_results, strict=True):
            if roles[index].use not in _ENERGY:
                continue
            scaler, unit = self._scaler(result, column.obis)
            expected = cosem.CHANNEL_UNIT[roles[index].channel]  # type: ignore[index]
            if unit != expected:
                raise ProtocolError(
                    f"{cosem.obis_str(column.obis)} reports unit code {unit}, "
                    f"expected {expected}: never rescaled silently",
                    endpoint=self.endpoint,
                )
            scalers[index] = (scaler, unit)
        layout = _ProfileLayout(columns, timedelta(seconds=period), depth, roles, scalers)
        self._layout = layout
        if key is not None:
            self._hints.put(key, columns)
        if body is not None and hint == columns:
            if len(_LAYOUTS) >= _LAYOUT_LIMIT:
                _LAYOUTS.clear()
            _LAYOUTS[body] = layout
        return layout

    def _scaler(self, result: _ListResult, obis: bytes) -> tuple[int, int]:
        try:
            scaler, unit = self._checked(result, f"{cosem.obis_str(obis)}/3").to_python()
            return int(scaler), int(unit)
        except DriverError:
            raise
        except Exception as exc:  # noqa: BLE001 - a scaler_unit that is not one is corrupt
            raise ProtocolError(f"{cosem.obis_str(obis)}/3: {exc!r}") from exc

    async def _read_profile_config(self) -> ProfileConfig:
        layout = await self._profile_layout()
        return ProfileConfig(layout.period, layout.depth, layout.channels, layout.description)

    async def _read_profile(self, start: datetime, end: datetime) -> list[ProfileEntry]:
        layout = await self._profile_layout()
        if start >= end:
            return []
        # Entries are stamped with their interval END and the range is inclusive at both
        # ends, so ask for stamps in [start + period, end + period − 1 s] and filter exactly.
        # Cumulative columns need the entry before the first interval too: stamp ``start``.
        first = start if layout.cumulative else start + layout.period
        tz = self.params.timezone
        selection = (
            first.astimezone(tz),
            (end + layout.period - timedelta(seconds=1)).astimezone(tz),
        )
        # Bounded by what the buffer can hold: a meter can't honestly answer more.
        limit = 64 + (layout.depth + 1) * (4 + _ROW_CELL_BYTES * len(layout.columns))
        raw = await self._get(
            en.CosemInterface.PROFILE_GENERIC, cosem.LOAD_PROFILE, 2, selection, limit
        )
        try:
            rows = cosem.parse_data(raw).value
            entries = self._entries(rows, layout)
        except DriverError:
            raise
        except Exception as exc:  # noqa: BLE001 - a buffer that does not decode is corrupt
            raise ProtocolError(f"load profile buffer: {exc!r}", endpoint=self.endpoint) from exc
        by_start = {e.start: e for e in entries if start <= e.start < end}
        return [by_start[t] for t in sorted(by_start)]

    def _entries(self, rows: list[Any], layout: _ProfileLayout) -> list[ProfileEntry]:
        """Interval entries: interval columns as read, cumulative columns differenced."""
        interval: list[ProfileEntry] = []
        cumulative: list[CumulativeRow] = []
        widths: dict[int, int] = {}
        previous_end: datetime | None = None
        for row in rows:
            cells = row.value
            if len(cells) != len(layout.columns):
                raise ProtocolError(f"profile row has {len(cells)} of {len(layout.columns)} cells")
            stamp: datetime | None = None
            values: dict[Channel, float] = {}
            totals: dict[int, float] = {}
            status = 0
            for index, (role, cell) in enumerate(zip(layout.roles, cells, strict=True)):
                if role.use is cosem.Use.CLOCK:
                    if isinstance(cell, dlms_data.NullData):
                        # Blue Book: a null clock means "previous entry + capture period".
                        if previous_end is None:
                            raise ProtocolError("first profile row has no time stamp")
                        stamp = previous_end + layout.period
                    elif isinstance(cell, dlms_data.OctetStringData):
                        stamp, _ = cosem.decode_datetime(bytes(cell.value), self.params.timezone)
                    else:
                        raise ProtocolError(f"profile time stamp of type {type(cell).__name__}")
                elif role.use is cosem.Use.STATUS:
                    status = 0 if isinstance(cell, dlms_data.NullData) else int(cell.value) & 0xFF
                elif role.use in _ENERGY and not isinstance(cell, dlms_data.NullData):
                    # A null cell was not captured: absent, never zero.
                    if not isinstance(cell.value, int | float) or isinstance(cell.value, bool):
                        raise ProtocolError(
                            f"{cosem.obis_str(role.column.obis)} cell of type {type(cell).__name__}"
                        )
                    scaler, unit = layout.scalers[index]
                    kilo = cosem.to_kilo(cell.value, scaler, unit, role.channel)  # type: ignore[arg-type]
                    if role.use is cosem.Use.CUMULATIVE:
                        totals[index] = kilo
                        widths.setdefault(index, _COUNTER_BITS.get(cell.TAG, 64))
                    else:
                        values[role.channel] = round(values.get(role.channel, 0.0) + kilo, 9)  # type: ignore[index]
            if stamp is None:
                raise ProtocolError("profile row without a time stamp")
            previous_end = stamp
            interval.append(ProfileEntry(stamp - layout.period, layout.period, values, status))
            cumulative.append(CumulativeRow(stamp, totals, status))
        if not layout.cumulative:
            return [e for e in interval if e.values]
        differenced, events = profile_entries(
            cumulative,
            period=layout.period,
            register_max={i: self._register_max(i, layout, widths) for i in layout.scalers},
            channels={i: layout.roles[i].channel for i in layout.scalers},  # type: ignore[misc]
        )
        grouped: dict[tuple[str, datetime], list[str]] = {}
        for event in events:  # one event per kind and entry, naming its columns
            column = cosem.obis_str(layout.columns[event.key].obis)  # type: ignore[index]
            grouped.setdefault((str(event.kind), event.at), []).append(
                f"{column} {event.before} -> {event.after}"
            )
        for (kind, at), what in grouped.items():
            self._event(kind, f"entry {at.isoformat()}: {'; '.join(what)}")
        # Interval columns of the same layout (if any) join the differenced channels.
        plain = {e.start: e for e in interval}
        diffed = {e.start: e for e in differenced}
        out = []
        for start in sorted(plain.keys() | diffed.keys()):
            p, d = plain.get(start), diffed.get(start)
            values = {**(p.values if p else {}), **(d.values if d else {})}
            if values:
                status = p.status if p is not None else d.status  # type: ignore[union-attr]
                rolled = d.rollover if d is not None else frozenset()
                out.append(ProfileEntry(start, layout.period, values, status, rolled))
        return out

    def _register_max(self, index: int, layout: _ProfileLayout, widths: Mapping[int, int]) -> float:
        """Where a cumulative column wraps, in kWh/kvarh: the ``register_max`` parameter, else
        ``register_digits`` with the column's scaler, else its data type's width."""
        if self.params.register_max is not None:
            return self.params.register_max
        scaler, _unit = layout.scalers[index]
        if self.params.register_digits is not None:
            return rollover_value(digits=self.params.register_digits, scaler=scaler, factor=1e-3)
        return rollover_value(bits=widths.get(index, 64), scaler=scaler, factor=1e-3)

    # --- registers ----------------------------------------------------------------------

    async def _read_registers(self) -> list[RegisterValue]:
        """Value and scaler_unit of every energy register in one GET-with-list.

        The scaler is read with the value every time (never cached), so a reprogrammed
        scaler can never be applied to a value it does not belong to.
        """
        reg = en.CosemInterface.REGISTER
        items = [
            (reg, obis, attribute) for obis in cosem.TOTAL_ENERGY.values() for attribute in (2, 3)
        ]
        results = await self._get_list(items)
        read_at = utcnow()
        out: list[RegisterValue] = []
        for i, (channel, obis) in enumerate(cosem.TOTAL_ENERGY.items()):
            try:
                raw = self._checked(results[2 * i], f"{cosem.obis_str(obis)}/2").to_python()
                scaler, unit = self._scaler(results[2 * i + 1], obis)
            except NotSupported:
                continue  # the meter has no such register: absent, not zero
            try:
                value = cosem.to_kilo(raw, scaler, unit, channel)
            except (TypeError, ValueError) as exc:
                raise ProtocolError(f"register {cosem.obis_str(obis)}: {exc}") from exc
            out.append(RegisterValue(channel, value, channel.unit, read_at))
        if not out:
            raise NotSupported("meter offers none of the energy registers")
        return out


@functools.lru_cache(maxsize=1024)
def _scaler_columns(
    columns: tuple[cosem.CaptureObject, ...],
) -> tuple[tuple[int, cosem.CaptureObject], ...]:
    """(index, column) of the energy columns whose scaler_unit applies to the captured value
    (once per distinct layout)."""
    roles = _roles(columns)
    return tuple((i, r.column) for i, r in enumerate(roles) if r.use in _ENERGY)


@functools.lru_cache(maxsize=1024)
def _roles(columns: tuple[cosem.CaptureObject, ...]) -> tuple[cosem.ColumnRole, ...]:
    """:func:`cosem.classify`, once per distinct layout (a pure function of the columns)."""
    return tuple(cosem.classify(columns))


def _describe(layout: _ProfileLayout) -> tuple[ProfileColumn, ...]:
    """The layout as ``cgm probe`` shows it."""
    out = []
    for index, role in enumerate(layout.roles):
        col = role.column
        scaler, unit = layout.scalers.get(index, (None, None))
        out.append(
            ProfileColumn(
                source=f"class {col.class_id} {cosem.obis_str(col.obis)} attr {col.attribute}",
                use=str(role.use),
                channel=role.channel,
                scaler=scaler,
                unit=cosem.UNIT_NAMES.get(unit, str(unit)) if unit is not None else None,
                note=role.note,
            )
        )
    return tuple(out)


def _parse_list(raw: bytes, *, exact: bool = True) -> list[_ListResult]:
    """The body of a GET-with-list answer: count, then per item a choice (0 data,
    1 data-access-result) and its content. ``exact``: trailing bytes are an error (as for an
    answer reassembled from blocks; dlms-cosem ignores them in a one-frame answer)."""
    count, at = axdr.length(raw, 0)
    out: list[_ListResult] = []
    try:
        for _ in range(count):
            choice = raw[at]
            if choice == 0:
                value, at = axdr.decode(raw, at + 1)
                out.append(value)
            elif choice == 1:
                out.append(en.DataAccessResult(raw[at + 1]))
                at += 2
            else:
                raise ValueError(f"get-data-result choice {choice}")
    except IndexError:
        raise ValueError(f"the list ends inside result {len(out) + 1} of {count}") from None
    if exact and at != len(raw):
        raise ValueError("trailing bytes after the list of results")
    return out


# --- the lean GET path (unciphered associations) -------------------------------------------


@dataclass(frozen=True, slots=True)
class _Normal:
    """get-response-normal with data: the raw A-XDR ``Data``."""

    data: bytes


@dataclass(frozen=True, slots=True)
class _Block:
    """get-response-with-datablock carrying raw data (not a data-access-result)."""

    last: bool
    block_number: int
    data: bytes
    invoke: int

    @property
    def invoke_id_and_priority(self) -> xdlms.InvokeIdAndPriority:
        return xdlms.InvokeIdAndPriority.from_bytes(bytes([self.invoke]))


@dataclass(frozen=True, slots=True)
class _List:
    """get-response-with-list in one frame."""

    results: list[_ListResult]
    body: bytes  # the encoded list, which the results are a function of


def _get_answer(apdu: bytes) -> Any:
    """A GET answer without dlms-cosem's APDU objects for the three common shapes (data, a
    block of data, a list), which are what a session is made of; anything else (an error,
    an exception response) is parsed by dlms-cosem as before.

    Why: the library builds attrs objects with validators for every APDU and decodes data
    through its slow parser (:mod:`.axdr`); together ~40 % of the driver's CPU per session.
    Exactly as strict: a block's length must match, a data value must decode (the caller
    checks for trailing bytes), a list must hold its count of results.
    """
    if apdu[:1] == b"\x61":
        return _aare(bytes(apdu))
    if apdu[:1] == b"\x63":
        return _rlre(bytes(apdu))
    if len(apdu) >= 4 and apdu[0] == 0xC4:
        kind = apdu[1]
        if kind == 1 and apdu[3] == 0:
            return _Normal(apdu[4:])
        if kind == 3:
            body = bytes(apdu[3:])
            return _List(_list_answer(body), body)
        if kind == 2 and len(apdu) >= 10 and apdu[8] == 0:
            size, at = axdr.length(apdu, 9)
            if at + size != len(apdu):
                raise ValueError("the block's data is not of its stated length")
            return _Block(apdu[3] != 0, int.from_bytes(apdu[4:8], "big"), apdu[at:], apdu[2])
    return XDlmsApduFactory.apdu_from_bytes(apdu)


@dataclass(frozen=True, slots=True)
class _Aare:
    """An AARE as dlms-cosem parsed it, and the RLRQ that releases what it negotiated."""

    apdu: Any
    release: bytes | None


@functools.lru_cache(maxsize=1024)
def _aare(raw: bytes) -> _Aare:
    """An AARE parsed by dlms-cosem once per distinct answer: a meter (and a fleet of one
    firmware) answers an LLS AARQ with the same bytes every session, and the library's BER
    parse of it was ~20 % of the driver's CPU per session. Only read, never changed."""
    apdu = XDlmsApduFactory.apdu_from_bytes(raw)
    release = None
    info = getattr(apdu, "user_information", None)
    if isinstance(info, acse.UserInformation) and isinstance(info.content, xdlms.InitiateResponse):
        content = info.content
        release = _release_request(
            content.negotiated_conformance.to_bytes(), content.server_max_receive_pdu_size
        )
    return _Aare(apdu, release)


@functools.lru_cache(maxsize=64)
def _rlre(raw: bytes) -> Any:
    """An RLRE as dlms-cosem parses it, once per distinct answer (only its type is used)."""
    return XDlmsApduFactory.apdu_from_bytes(raw)


_AARQS: dict[tuple[bytes, bytes, int], bytes] = {}
_AARQ_LIMIT = 100_000  # one per meter secret; the oldest go first


def _lls_aarq(conn: DlmsConnection) -> bytes:
    """The LLS AARQ dlms-cosem builds (``DlmsConnection.get_aarq``), encoded once per
    password, system title and PDU size: without a challenge it is the same every session,
    and building and BER-encoding it was ~15 % of the driver's CPU per session."""
    key = (
        bytes(conn.authentication.get_calling_authentication_value() or b""),
        bytes(conn.client_system_title),
        conn.max_pdu_size,
    )
    out = _AARQS.pop(key, None)
    if out is None:
        out = conn.get_aarq().to_bytes()
    _AARQS[key] = out  # most recently used last
    while len(_AARQS) > _AARQ_LIMIT:
        del _AARQS[next(iter(_AARQS))]
    return out


@functools.lru_cache(maxsize=1024)
def _list_answer(body: bytes) -> list[_ListResult]:
    """A one-frame list answer, decoded once per distinct answer: a profile configuration
    (capture objects, period, depth, scalers) is the same bytes hour after hour and meter
    after meter of one layout. The decoded values are only read, never changed."""
    return _parse_list(body, exact=False)


@functools.lru_cache(maxsize=4096)
def _get_request(class_id: int, obis: bytes, attribute: int) -> bytes:
    """get-request-normal without selection, encoded once by dlms-cosem per attribute."""
    return xdlms.GetRequestNormal(cosem_attribute=_attribute(class_id, obis, attribute)).to_bytes()


def _range(low: datetime, high: datetime) -> RangeDescriptor:
    """Selective access by range on the profile's clock column, both ends inclusive."""
    return RangeDescriptor(
        restricting_object=LibCaptureObject(_attribute(en.CosemInterface.CLOCK, cosem.CLOCK, 2), 0),
        from_value=low,
        to_value=high,
    )


def _offsets(window: tuple[datetime, datetime]) -> tuple[Any, Any]:
    # Equal instants in other zones compare equal but encode differently: part of the key.
    return window[0].utcoffset(), window[1].utcoffset()


@functools.lru_cache(maxsize=256)
def _range_request(
    class_id: int, obis: bytes, attribute: int, low: datetime, high: datetime, *_zone: Any
) -> bytes:
    """get-request-normal with a range, encoded once by dlms-cosem per window: every meter
    of a cycle is asked for the same hour."""
    return xdlms.GetRequestNormal(
        cosem_attribute=_attribute(class_id, obis, attribute), access_selection=_range(low, high)
    ).to_bytes()


@functools.lru_cache(maxsize=64)
def _release_request(conformance: bytes, max_pdu_size: int) -> bytes:
    """The RLRQ dlms-cosem builds (``DlmsConnection.get_rlrq``), encoded once per
    negotiated conformance and PDU size."""
    return acse.ReleaseRequest(
        reason=en.ReleaseRequestReason.NORMAL,
        user_information=acse.UserInformation(
            content=xdlms.InitiateRequest(
                proposed_conformance=Conformance.from_bytes(conformance),
                client_max_receive_pdu_size=max_pdu_size,
            )
        ),
    ).to_bytes()


@functools.lru_cache(maxsize=1024)
def _get_list_request(items: tuple[tuple[int, bytes, int], ...]) -> bytes:
    """get-request-with-list, encoded once by dlms-cosem per list (a session's lists are
    the same every hour: identity, profile configuration, registers)."""
    return xdlms.GetRequestWithList(
        cosem_attributes_with_selection=[
            lib_cosem.CosemAttributeWithSelection(_attribute(c, o, a), None) for c, o, a in items
        ]
    ).to_bytes()


def _attribute(class_id: int, obis: bytes, attribute: int) -> lib_cosem.CosemAttribute:
    """The library's attribute descriptor, built once per address: its attrs validators and
    OBIS parsing were ~9 % of the collector's CPU per DLMS session. Shared, so never mutated
    (the library only encodes it)."""
    return _attribute_of(int(class_id), bytes(obis), int(attribute))


@functools.lru_cache(maxsize=4096)
def _attribute_of(class_id: int, obis: bytes, attribute: int) -> lib_cosem.CosemAttribute:
    return lib_cosem.CosemAttribute(
        interface=en.CosemInterface(class_id),
        instance=lib_cosem.Obis.from_bytes(obis),
        attribute=attribute,
    )


def _datetime_bytes(raw: bytes) -> bytes:
    """The 12 date-time bytes of an encoded octet-string(12) or date-time (tag 25) value."""
    if len(raw) == 14 and raw[0] == dlms_data.OctetStringData.TAG and raw[1] == 12:
        return raw[2:]
    if len(raw) == 13 and raw[0] == dlms_data.DateTimeData.TAG:
        return raw[1:]
    raise ValueError(f"not a date-time: {raw[:4].hex()}…")


class DlmsDriver(Driver):
    """Opens LN associations with LLS authentication (see README.md for the levels)."""

    protocol = "dlms"

    def __init__(self, counter_store: InvocationCounterStore | None = None) -> None:
        self.hints = ColumnHints()  # shared by this driver's sessions (one event loop)
        # HLS-GMAC invocation counters; the application sets a persistent store.
        self.counter_store = counter_store

    async def connect(
        self,
        endpoint: Endpoint,
        credentials: Credentials,
        params: Mapping[str, Any] | None = None,
        timeout: float = 10.0,
    ) -> DlmsSession:
        session = DlmsSession(
            endpoint,
            credentials,
            timeout,
            _params(params),
            self.hints,
            self.counter_store,
        )
        try:
            async with asyncio.timeout(timeout):  # no task per connect, as wait_for makes
                await session._open()
        except TimeoutError as exc:
            await session._abort()
            raise MeterTimeout(
                f"connect: no answer from {endpoint} within {timeout:g} s", endpoint=endpoint
            ) from exc
        except BaseException:
            await session._abort()
            raise
        return session
