"""DLMS/COSEM driver: logical-name association over the IEC 62056-47 TCP wrapper, on asyncio.

The protocol state (AARQ/AARE, GET/SET, blocks, RLRQ) is dlms-cosem's sans-I/O
``DlmsConnection``; this module only moves its bytes and turns DLMS outcomes into the
driver errors of :mod:`drivers.base`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import structlog
from dlms_cosem import cosem as lib_cosem
from dlms_cosem import dlms_data
from dlms_cosem import enumerations as en
from dlms_cosem.connection import DlmsConnection
from dlms_cosem.cosem.capture_object import CaptureObject as LibCaptureObject
from dlms_cosem.cosem.selective_access import RangeDescriptor
from dlms_cosem.protocol import acse, xdlms
from dlms_cosem.security import LowLevelSecurityAuthentication

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
    ProfileConfig,
    ProfileEntry,
    ProtocolError,
    RegisterValue,
    utcnow,
)

from . import cosem
from .transport import WrapperError, WrapperTransport


def _quiet_dlms_cosem() -> None:
    """dlms-cosem logs every APDU at INFO through structlog: keep only warnings and up.

    The library's module loggers are replaced by proxies that still use the application's
    structlog configuration but filter below WARNING; the stdlib logger is set too in case
    structlog is routed through ``logging``.
    """
    import dlms_cosem.client
    import dlms_cosem.connection
    import dlms_cosem.io
    import dlms_cosem.state

    quiet = structlog.wrap_logger(
        None, wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING)
    )
    for module in (dlms_cosem.connection, dlms_cosem.state, dlms_cosem.client, dlms_cosem.io):
        module.LOG = quiet
    logging.getLogger("dlms_cosem").setLevel(logging.WARNING)


_quiet_dlms_cosem()

_AUTH_DIAGNOSTICS = {
    en.AcseServiceUserDiagnostics.AUTHENTICATION_FAILED,
    en.AcseServiceUserDiagnostics.AUTHENTICATION_REQUIRED,
    en.AcseServiceUserDiagnostics.AUTHENTICATION_MECHANISM_NAME_REQUIRED,
    en.AcseServiceUserDiagnostics.AUTHENTICATION_MECHANISM_NAME_NOT_RECOGNIZED,
}
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


def _parse_secret(secret: str) -> bytes:
    """LLS password: text as UTF-8, or ``hex:...`` for a binary password."""
    if secret.startswith("hex:"):
        return bytes.fromhex(secret[4:])
    return secret.encode()


@dataclass(frozen=True)
class DlmsParams:
    """Protocol parameters of one meter (see README.md)."""

    server_address: int = cosem.MANAGEMENT_LOGICAL_DEVICE
    client_address: int | None = None
    timezone: timezone = cosem.COLOMBIA
    max_pdu_size: int = 0xFFFF

    @classmethod
    def from_mapping(cls, params: Mapping[str, Any] | None) -> DlmsParams:
        params = dict(params or {})
        unknown = set(params) - {"server_address", "client_address", "timezone", "max_pdu_size"}
        if unknown:
            raise ValueError(f"unknown DLMS parameters: {sorted(unknown)}")
        client = params.get("client_address")
        return cls(
            server_address=int(params.get("server_address", cosem.MANAGEMENT_LOGICAL_DEVICE)),
            client_address=None if client is None else int(str(client), 0),
            timezone=_parse_tz(params.get("timezone", "-05:00")),
            max_pdu_size=int(params.get("max_pdu_size", 0xFFFF)),
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


@dataclass(frozen=True)
class _ProfileLayout:
    columns: tuple[cosem.CaptureObject, ...]
    period: timedelta
    depth: int
    scalers: Mapping[Channel, tuple[int, int]]  # channel -> (scaler, unit)


class DlmsSession(MeterSession):
    """One association with one logical device. Not reusable after a transport failure."""

    def __init__(
        self, endpoint: Endpoint, credentials: Credentials, timeout: float, params: DlmsParams
    ) -> None:
        super().__init__(endpoint, credentials, timeout)
        self.params = params
        self._transport = WrapperTransport(params.client_sap(credentials), params.server_address)
        self._conn = DlmsConnection(
            authentication=LowLevelSecurityAuthentication(secret=_parse_secret(credentials.secret)),
            client_system_title=None,
            max_pdu_size=params.max_pdu_size,
        )
        self._associated = False
        self._broken: str | None = None
        self._layout: _ProfileLayout | None = None
        self._register_scalers: dict[Channel, tuple[int, int]] = {}
        self.blocks_received = 0  # GET-with-block blocks in this session (observability)
        self.negotiated_pdu_size: int | None = None

    # --- association --------------------------------------------------------------------

    async def _open(self) -> None:
        try:
            await self._transport.open(self.endpoint.host, self.endpoint.port)
        except OSError as exc:
            raise ConnectionFailed(f"cannot connect: {exc}", endpoint=self.endpoint) from exc
        aare = await self._exchange(self._conn.get_aarq())
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
                self._associated = False
                await self._exchange(self._conn.get_rlrq())
        finally:
            await self._transport.close()

    # --- one request, one answer --------------------------------------------------------

    async def _exchange(self, event: Any) -> Any:
        """Send one APDU, return the parsed answer; map transport failures to driver errors.

        Anything that interrupts an exchange (timeout, dropped link, a frame that does not
        parse) leaves the association out of step, so the session is marked broken.
        """
        if self._broken is not None:
            raise ConnectionFailed(f"session unusable: {self._broken}", endpoint=self.endpoint)
        ok = False
        try:
            try:
                out = self._conn.send(event)
            except Exception as exc:  # noqa: BLE001 - the association is not in a state for it
                raise ProtocolError(f"cannot send {type(event).__name__}: {exc}") from exc
            try:
                answer = await self._transport.request(out)
            except WrapperError as exc:
                raise ProtocolError(f"bad wrapper frame: {exc}", endpoint=self.endpoint) from exc
            except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
                raise ConnectionFailed(f"connection lost: {exc!r}", endpoint=self.endpoint) from exc
            self._conn.receive_data(answer)
            try:
                parsed = self._conn.next_event()
            except Exception as exc:  # noqa: BLE001 - any parse failure is a corrupt frame
                self._conn.clear_buffer()
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
        self, class_id: int, obis: bytes, attribute: int, selection: Any = None
    ) -> bytes:
        """GET one attribute (following GET-with-block to the last block); raw A-XDR Data."""
        what = f"{cosem.obis_str(obis)}/{attribute}"
        answer = await self._exchange(
            xdlms.GetRequestNormal(
                cosem_attribute=_attribute(class_id, obis, attribute),
                access_selection=selection,
            )
        )
        data = bytearray()
        expected_block = 1
        while True:
            if isinstance(answer, xdlms.GetResponseNormal):
                return bytes(answer.data)
            if isinstance(
                answer, xdlms.GetResponseNormalWithError | xdlms.GetResponseLastBlockWithError
            ):
                raise self._access_error(what, answer.error)
            if isinstance(answer, xdlms.ExceptionResponse):
                raise ProtocolError(f"GET {what}: exception {answer!r}", endpoint=self.endpoint)
            if isinstance(answer, xdlms.GetResponseWithBlock | xdlms.GetResponseLastBlock):
                if answer.block_number != expected_block:
                    raise ProtocolError(
                        f"GET {what}: block {answer.block_number}, expected {expected_block}",
                        endpoint=self.endpoint,
                    )
                self.blocks_received += 1
                data.extend(answer.data)
                if isinstance(answer, xdlms.GetResponseLastBlock):
                    return bytes(data)
                answer = await self._exchange(
                    xdlms.GetRequestNext(
                        block_number=answer.block_number,
                        invoke_id_and_priority=answer.invoke_id_and_priority,
                    )
                )
                expected_block += 1
                continue
            raise ProtocolError(f"GET {what}: unexpected {type(answer).__name__}")

    def _access_error(self, what: str, result: en.DataAccessResult) -> DriverError:
        if result in _DENIED:
            return AccessDenied(f"{what}: {result.name}", endpoint=self.endpoint)
        if result in _UNDEFINED:
            return NotSupported(f"{what}: {result.name}", endpoint=self.endpoint)
        return DriverError(f"{what}: {result.name}", endpoint=self.endpoint)

    async def _get_value(self, class_id: int, obis: bytes, attribute: int) -> Any:
        raw = await self._get(class_id, obis, attribute)
        try:
            return cosem.parse_data(raw)
        except Exception as exc:  # noqa: BLE001 - undecodable data is a corrupt frame
            raise ProtocolError(f"{cosem.obis_str(obis)}/{attribute}: {exc!r}") from exc

    # --- identity and clock -------------------------------------------------------------

    async def _identify(self) -> MeterIdentity:
        serial = await self._get_text(cosem.SERIAL, required=True)
        return MeterIdentity(
            serial=serial,
            manufacturer=await self._get_text(cosem.MANUFACTURER),
            model=await self._get_text(cosem.MODEL),
            firmware=await self._get_text(cosem.FIRMWARE),
        )

    async def _get_text(self, obis: bytes, *, required: bool = False) -> str:
        """A Data object's string value; "" for an optional object the meter lacks."""
        try:
            value = (await self._get_value(en.CosemInterface.DATA, obis, 2)).to_python()
        except NotSupported:
            if required:
                raise
            return ""
        if isinstance(value, bytes | bytearray):
            return bytes(value).decode("utf-8", errors="replace").strip("\x00 ")
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

    async def _profile_layout(self) -> _ProfileLayout:
        if self._layout is not None:
            return self._layout
        pg = en.CosemInterface.PROFILE_GENERIC
        columns = tuple(
            cosem.CaptureObject.decode(item)
            for item in (await self._get_value(pg, cosem.LOAD_PROFILE, 3)).value
        )
        period = int((await self._get_value(pg, cosem.LOAD_PROFILE, 4)).to_python())
        depth = int((await self._get_value(pg, cosem.LOAD_PROFILE, 8)).to_python())
        if period <= 0:
            raise ProtocolError(f"load profile capture period {period} s")
        if cosem.CLOCK_CAPTURE not in columns:
            raise NotSupported("load profile does not capture the clock")
        scalers = {}
        for column in columns:
            channel = cosem.CHANNEL_BY_OBIS.get(column.obis)
            if channel is not None and column.attribute == 2:
                scalers[channel] = await self._scaler_unit(column.class_id, column.obis)
        self._layout = _ProfileLayout(columns, timedelta(seconds=period), depth, scalers)
        return self._layout

    async def _scaler_unit(self, class_id: int, obis: bytes) -> tuple[int, int]:
        if class_id not in (en.CosemInterface.REGISTER, en.CosemInterface.EXTENDED_REGISTER):
            raise NotSupported(f"{cosem.obis_str(obis)} is class {class_id}, not a register")
        scaler, unit = (await self._get_value(class_id, obis, 3)).to_python()
        return int(scaler), int(unit)

    async def _read_profile_config(self) -> ProfileConfig:
        layout = await self._profile_layout()
        return ProfileConfig(layout.period, layout.depth, tuple(layout.scalers))

    async def _read_profile(self, start: datetime, end: datetime) -> list[ProfileEntry]:
        layout = await self._profile_layout()
        if start >= end:
            return []
        # Entries are stamped with their interval END and the range is inclusive at both
        # ends, so ask for stamps in [start + period, end + period − 1 s] and filter exactly.
        tz = self.params.timezone
        selection = RangeDescriptor(
            restricting_object=LibCaptureObject(
                _attribute(en.CosemInterface.CLOCK, cosem.CLOCK, 2), 0
            ),
            from_value=(start + layout.period).astimezone(tz),
            to_value=(end + layout.period - timedelta(seconds=1)).astimezone(tz),
        )
        raw = await self._get(en.CosemInterface.PROFILE_GENERIC, cosem.LOAD_PROFILE, 2, selection)
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
        out: list[ProfileEntry] = []
        previous_end: datetime | None = None
        for row in rows:
            cells = row.value
            if len(cells) != len(layout.columns):
                raise ProtocolError(f"profile row has {len(cells)} of {len(layout.columns)} cells")
            stamp: datetime | None = None
            values: dict[Channel, float] = {}
            status = 0
            for column, cell in zip(layout.columns, cells, strict=True):
                if column == cosem.CLOCK_CAPTURE:
                    if isinstance(cell, dlms_data.NullData):
                        # Blue Book: a null clock means "previous entry + capture period".
                        if previous_end is None:
                            raise ProtocolError("first profile row has no time stamp")
                        stamp = previous_end + layout.period
                    elif isinstance(cell, dlms_data.OctetStringData):
                        stamp, _ = cosem.decode_datetime(bytes(cell.value), self.params.timezone)
                    else:
                        raise ProtocolError(f"profile time stamp of type {type(cell).__name__}")
                elif column.obis == cosem.PROFILE_STATUS:
                    status = 0 if isinstance(cell, dlms_data.NullData) else int(cell.value)
                elif (channel := cosem.CHANNEL_BY_OBIS.get(column.obis)) in layout.scalers:
                    if isinstance(cell, dlms_data.NullData):
                        continue  # not captured: absent, never zero
                    scaler, unit = layout.scalers[channel]
                    values[channel] = cosem.to_kilo(cell.value, scaler, unit, channel)
            if stamp is None:
                raise ProtocolError("profile row without a time stamp")
            previous_end = stamp
            out.append(ProfileEntry(stamp - layout.period, layout.period, values, status))
        return out

    # --- registers ----------------------------------------------------------------------

    async def _read_registers(self) -> list[RegisterValue]:
        out: list[RegisterValue] = []
        for channel, obis in cosem.TOTAL_ENERGY.items():
            try:
                if channel not in self._register_scalers:
                    self._register_scalers[channel] = await self._scaler_unit(
                        en.CosemInterface.REGISTER, obis
                    )
                raw = (await self._get_value(en.CosemInterface.REGISTER, obis, 2)).to_python()
            except NotSupported:
                continue  # the meter has no such register: absent, not zero
            read_at = utcnow()
            scaler, unit = self._register_scalers[channel]
            try:
                value = cosem.to_kilo(raw, scaler, unit, channel)
            except (TypeError, ValueError) as exc:
                raise ProtocolError(f"register {cosem.obis_str(obis)}: {exc}") from exc
            out.append(RegisterValue(channel, value, channel.unit, read_at))
        if not out:
            raise NotSupported("meter offers none of the energy registers")
        return out


def _attribute(class_id: int, obis: bytes, attribute: int) -> lib_cosem.CosemAttribute:
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

    async def connect(
        self,
        endpoint: Endpoint,
        credentials: Credentials,
        params: Mapping[str, Any] | None = None,
        timeout: float = 10.0,
    ) -> DlmsSession:
        session = DlmsSession(endpoint, credentials, timeout, DlmsParams.from_mapping(params))
        try:
            await asyncio.wait_for(session._open(), timeout)
        except TimeoutError as exc:
            await session._abort()
            raise MeterTimeout(
                f"connect: no answer from {endpoint} within {timeout:g} s", endpoint=endpoint
            ) from exc
        except BaseException:
            await session._abort()
            raise
        return session
