"""How documents reach the ASIC, behind a small interface so another service (e.g. XM's
older SOAP reading service) can be added without touching delivery.

:class:`HttpTransport` speaks the REST reading service: a bearer token from a
client-credentials endpoint, a multipart upload of a zip with the CGM's code answered by a
message id, and a status query per message id. Every request and response is handed to
``record`` (hashes, status, redacted body) so delivery can store it.
"""

from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

# The ASIC's processing states, as this adapter names them.
WAITING, SUCCESS, WARNING, ERROR = "waiting", "success", "success_warning", "error"
FINAL = (SUCCESS, WARNING, ERROR)
_STATES = {
    "enespera": WAITING,
    "en espera": WAITING,
    "procesando": WAITING,
    "exitoso": SUCCESS,
    "exitosoconadvertencia": WARNING,
    "exitoso con advertencia": WARNING,
    "error": ERROR,
    "rechazado": ERROR,
}
MAX_STORED_BODY = 8000


@dataclass(frozen=True)
class Exchange:
    """One HTTP request and what came back (or the error), safe to store."""

    operation: str  # token | upload | status
    method: str
    url: str
    request_hash: str
    status_code: int | None
    response: str | None
    response_hash: str | None
    error: str | None
    seconds: float


@dataclass(frozen=True)
class FileState:
    name: str
    state: str
    message: str = ""


@dataclass(frozen=True)
class Status:
    message_id: str
    state: str  # waiting | success | success_warning | error
    files: list[FileState] = field(default_factory=list)
    message: str = ""

    @property
    def final(self) -> bool:
        return self.state in FINAL


class TransportError(Exception):
    """The ASIC could not be reached or answered with a server error (worth retrying)."""


class TokenRefused(TransportError):
    """The token endpoint refused our client id or secret (or a fresh token was refused).

    A transport failure, not a verdict on the documents: they stay pending and go out on
    the next run once the credentials are fixed. Not retried within a run (each retry would
    be one more refused login)."""


class Rejected(Exception):
    """The ASIC refused the request itself (4xx other than an expired token): not retried."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(f"{status_code}: {message}")
        self.status_code = status_code
        self.message = message


Recorder = Callable[[Exchange], None]


class AsicTransport(ABC):
    """Send one zip, ask for a message's state. Implementations never touch the database."""

    name: str = "abstract"

    @abstractmethod
    async def upload(self, zip_name: str, payload: bytes, record: Recorder) -> str:
        """Post a zip; return the ASIC's message id. Raises TransportError / Rejected."""

    @abstractmethod
    async def status(self, message_id: str, record: Recorder) -> Status:
        """The processing state of a message."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def _content_type(name: str) -> str:
    return "application/xml" if name.endswith(".xml") else "application/zip"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def map_state(raw: str) -> str:
    try:
        return _STATES[raw.strip().lower()]
    except KeyError:
        raise TransportError(f"unknown processing state {raw!r}") from None


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, TransportError) and not isinstance(exc, TokenRefused)


class HttpTransport(AsicTransport):
    """XM's REST reading service (paths relative to ``base_url``):

    * ``POST token`` (form: grant_type=client_credentials, client_id, client_secret)
      → ``{access_token, token_type, expires_in}``;
    * ``POST lecturas`` (multipart: ``codigoCGM``, file ``archivo``), bearer token
      → ``{mensajeId}``;
    * ``GET lecturas/{mensajeId}`` → ``{mensajeId, estado, detalles: [{archivo, estado,
      mensaje}]}``.

    A token is renewed ``renew_margin_s`` before it expires and once more on a 401.
    Transport errors and 5xx answers are retried with exponential backoff (tenacity).
    """

    name = "rest"

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        cgm_code: str,
        *,
        timeout: float = 30.0,
        attempts: int = 4,
        backoff_s: float = 1.0,
        renew_margin_s: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/", timeout=timeout, transport=transport
        )
        self._client_id = client_id
        self._secret = client_secret
        self.cgm_code = cgm_code
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.renew_margin_s = renew_margin_s
        self._token: str | None = None
        self._expires = 0.0

    async def aclose(self) -> None:
        await self._client.aclose()

    def __repr__(self) -> str:  # never show the secret or the token
        return f"HttpTransport({str(self._client.base_url)!r}, client_id={self._client_id!r})"

    async def upload(self, zip_name: str, payload: bytes, record: Recorder) -> str:
        async def call() -> httpx.Response:
            return await self._authorized(
                "upload",
                "POST",
                "lecturas",
                sha256(payload),
                record,
                data={"codigoCGM": self.cgm_code},
                files={"archivo": (zip_name, payload, _content_type(zip_name))},
            )

        resp = await self._retrying(call)
        body = _json(resp)
        message_id = body.get("mensajeId") or body.get("messageId")
        if not message_id:
            raise TransportError(f"upload answer without a message id: {resp.text[:200]}")
        return str(message_id)

    async def status(self, message_id: str, record: Recorder) -> Status:
        path = f"lecturas/{message_id}"

        async def call() -> httpx.Response:
            return await self._authorized("status", "GET", path, sha256(path.encode()), record)

        body = _json(await self._retrying(call))
        files = [
            FileState(
                str(d.get("archivo", "")), map_state(str(d.get("estado", ""))), d.get("mensaje", "")
            )
            for d in body.get("detalles") or []
        ]
        return Status(
            str(body.get("mensajeId", message_id)),
            map_state(str(body.get("estado", ""))),
            files,
            str(body.get("mensaje", "")),
        )

    async def _retrying(self, call: Callable[[], Any]) -> httpx.Response:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=self.backoff_s, max=60),
            retry=retry_if_exception(_retryable),
            reraise=True,
        ):
            with attempt:
                return await call()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _authorized(
        self,
        operation: str,
        method: str,
        path: str,
        request_hash: str,
        record: Recorder,
        **kwargs: Any,
    ) -> httpx.Response:
        """One request with a valid token; a 401 renews the token and tries once more."""
        for renewed in (False, True):
            token = await self._valid_token(record, force=renewed)
            resp = await self._send(
                operation,
                method,
                path,
                request_hash,
                record,
                headers={"Authorization": f"Bearer {token}"},
                **kwargs,
            )
            if resp.status_code != 401:
                return _checked(resp)
            self._token = None
        raise TokenRefused("HTTP 401: a freshly issued token was refused")

    async def _valid_token(self, record: Recorder, *, force: bool = False) -> str:
        if not force and self._token and time.monotonic() < self._expires - self.renew_margin_s:
            return self._token
        resp = await self._send(
            "token",
            "POST",
            "token",
            sha256(f"client_credentials:{self._client_id}".encode()),
            record,
            data={
                "grant_type": "client_credentials",
                "client_id": self._client_id,
                "client_secret": self._secret,
            },
            redact=True,
        )
        if resp.status_code in (400, 401, 403):
            raise TokenRefused(
                f"HTTP {resp.status_code}: token refused: check CGM_ASIC_CLIENT_ID and "
                "CGM_ASIC_CLIENT_SECRET"
            )
        body = _json(_checked(resp))
        token = body.get("access_token")
        if not token:
            raise TransportError("token answer without access_token")
        self._token = str(token)
        self._expires = time.monotonic() + float(body.get("expires_in", 300))
        return self._token

    async def _send(
        self,
        operation: str,
        method: str,
        path: str,
        request_hash: str,
        record: Recorder,
        *,
        redact: bool = False,
        **kwargs: Any,
    ) -> httpx.Response:
        url = str(self._client.base_url.join(path))
        t0 = time.monotonic()
        try:
            resp = await self._client.request(method, path, **kwargs)
        except httpx.TransportError as exc:  # includes timeouts
            record(
                Exchange(operation, method, url, request_hash, None, None, None,
                         f"{type(exc).__name__}: {exc}", time.monotonic() - t0)
            )  # fmt: skip
            raise TransportError(f"{operation}: {type(exc).__name__}: {exc}") from exc
        text = "(redacted: token answer)" if redact and resp.is_success else resp.text
        record(
            Exchange(operation, method, url, request_hash, resp.status_code,
                     text[:MAX_STORED_BODY], sha256(resp.content), None, time.monotonic() - t0)
        )  # fmt: skip
        return resp


def _checked(resp: httpx.Response) -> httpx.Response:
    if resp.status_code >= 500:
        raise TransportError(f"HTTP {resp.status_code}: {resp.text[:200]}")
    if resp.status_code == 401:
        return resp
    if resp.status_code >= 400:
        raise Rejected(resp.status_code, resp.text[:500])
    return resp


def _json(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError as exc:
        raise TransportError(f"answer is not JSON: {resp.text[:200]}") from exc
    if not isinstance(body, dict):
        raise TransportError("answer is not a JSON object")
    return body
