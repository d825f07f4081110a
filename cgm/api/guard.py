"""What every API request passes before the application sees it (a plain ASGI middleware).

* Control characters (NUL included) in the path or the query are refused with 400: they can
  only be an attack or a client bug, and PostgreSQL refuses NUL in text anyway.
* A body longer than the cap is refused with 413, from ``Content-Length`` before anything is
  read, and while reading when the length is not declared.
* A request that carries a body is authenticated **before the body is read**: a missing or
  wrong password costs the server one header, never the upload.
* Whoever keeps failing to log in is answered 429 with ``Retry-After`` (see
  ``cgm.security.throttle``), without a password check or a database query.
* No traceback reaches a client: a bug is a plain 500, its traceback in the server log.
* Every request to a write endpoint lands in ``api_access``, refused and malformed ones
  included — except that anonymous failures (no valid user: 401, 429) are written in
  bounded form: the first per client and status in each minute, with the count of those
  folded into it since the previous row, and the same for the server log.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote_to_bytes

from psycopg_pool import AsyncConnectionPool

from cgm.api.access import AccessCache, principal
from cgm.security import users
from cgm.security.throttle import LoginThrottle

log = logging.getLogger("cgm.api")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

API = "/api/v1"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
AUTH_HEADERS = [(b"www-authenticate", b'Basic realm="cgm", charset="UTF-8"')]
_CONTROL = frozenset(range(0x20)) | {0x7F}


class Refused(Exception):
    """An authentication refusal: 401, or 429 with the seconds to wait."""

    def __init__(self, status: int, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after


def client_of(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "?"


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) from an ``Authorization: Basic`` header; None when absent; Refused
    when malformed (so a bad header is a 401, never a 500)."""
    if not header:
        return None
    scheme, _, param = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        text = base64.b64decode(param.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise Refused(401, "malformed HTTP Basic credentials") from None
    username, sep, password = text.partition(":")
    if not sep or any(ord(c) in _CONTROL for c in text):
        raise Refused(401, "malformed HTTP Basic credentials")
    return username, password


class AnonymousFailures:
    """Bounded bookkeeping of failures without a valid user: says which ones to write."""

    def __init__(self, window_s: float = 60.0, max_keys: int = 1000) -> None:
        self.window_s, self.max_keys = window_s, max_keys
        self._seen: OrderedDict[tuple[str, int], list[float | int]] = OrderedDict()

    def record(self, client: str, status: int, now: float | None = None) -> int | None:
        """None: only counted. A number: write a row now, folding in that many earlier ones."""
        now = time.monotonic() if now is None else now
        key = (client, status)
        if key not in self._seen and len(self._seen) >= self.max_keys:
            key = ("*", status)  # too many clients: one shared key keeps memory bounded
        entry = self._seen.get(key)
        if entry is None or now - entry[0] >= self.window_s:
            folded = int(entry[1]) if entry else 0
            self._seen[key] = [now, 0]
            self._seen.move_to_end(key)
            while len(self._seen) > self.max_keys:
                self._seen.popitem(last=False)
            return folded
        entry[1] += 1
        return None


class Authenticator:
    """HTTP Basic against the service's users, behind the login throttle; a credential that
    authenticated is remembered in ``cache`` (see ``cgm.api.access``) while it listens."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        throttle: LoginThrottle | None = None,
        cache: AccessCache | None = None,
    ) -> None:
        self.pool = pool
        self.throttle = throttle or LoginThrottle()
        self.failures = AnonymousFailures()
        self.cache = cache or AccessCache()

    async def user(self, scope: Scope, header: str | None) -> users.User:
        """The authenticated user with its scope and unit (a ``Principal``, kept on the
        request's state), or Refused."""
        state = scope.setdefault("state", {})
        if isinstance(state.get("user"), users.User):
            return state["user"]
        client = client_of(scope)
        creds = basic_credentials(header)
        if creds is None:
            raise Refused(401, "authentication required (HTTP Basic)")
        name, password = creds
        wait = self.throttle.wait(client, name)
        if wait > 0:
            raise Refused(429, "too many failed logins: wait before trying again", wait)
        key = self.cache.key(name, password)
        who = self.cache.get(key)
        if who is None:
            generation = self.cache.generation
            try:
                user = await users.authenticate(self.pool, name, password)
            except users.AuthFailed as exc:
                delay = self.throttle.failed(client, name)
                if self.failures.record(client, 401) is not None:
                    log.warning("API authentication refused from %s: %s", client, exc.why)
                raise Refused(
                    401, "invalid credentials, or the account is disabled", delay
                ) from None
            async with self.pool.connection() as conn:
                who = await principal(conn, user)
            self.cache.put(key, who, generation)
        self.throttle.succeeded(client, name)
        state["user"] = who
        return who


async def _send_json(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()
) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


def refusal_headers(exc: Refused) -> list[tuple[bytes, bytes]]:
    if exc.status == 429:
        return [(b"retry-after", str(max(1, round(exc.retry_after + 0.5))).encode())]
    return list(AUTH_HEADERS)


class RequestGuard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        pool: AsyncConnectionPool,
        auth: Authenticator,
        max_body_bytes: int,
        record_access: Callable[..., Awaitable[None]],
    ) -> None:
        self.app, self.pool, self.auth = app, pool, auth
        self.max_body = max_body_bytes
        self.record_access = record_access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        status: list[int] = []

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            await self._handle(scope, receive, send_status)
        except Exception:
            log.exception("API error on %s %s", scope.get("method"), scope.get("path"))
            if not status:
                await _send_json(send_status, 500, {"error": "internal error"})
        method, path = scope.get("method", ""), scope.get("path", "")
        if method in SAFE_METHODS or not path.startswith(API) or state.get("access_logged"):
            return
        code = status[0] if status else 500
        folded = 0
        if code in (401, 429) and not isinstance(state.get("user"), users.User):
            maybe = self.auth.failures.record(client_of(scope), -code)
            if maybe is None:
                return
            folded = maybe
        try:
            detail = {"anonymous_failures_folded": folded} if folded else {}
            await self.record_access(scope, code, detail)
        except Exception:
            log.exception("could not record an API write request in api_access")

    def _too_large(self) -> dict[str, Any]:
        return {"error": f"request body larger than {self.max_body} bytes"}

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if _has_control(scope):
            await _send_json(
                send,
                400,
                {
                    "error": "invalid request",
                    "problems": [{"where": "url", "message": "control characters are not allowed"}],
                },
            )
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _send_json(send, 400, {"error": "invalid Content-Length"})
                return
            if length > self.max_body:
                await _send_json(send, 413, self._too_large())
                return
        has_body = (declared is not None and declared != b"0") or b"transfer-encoding" in headers
        if has_body or scope.get("method") not in SAFE_METHODS:
            if scope.get("path", "").startswith(API):
                auth = headers.get(b"authorization")
                try:
                    await self.auth.user(scope, auth.decode("latin-1") if auth else None)
                except Refused as exc:
                    await _send_json(send, exc.status, {"error": exc.message}, refusal_headers(exc))
                    return
        seen = 0
        refused = False

        async def capped() -> Message:
            # Over the cap: answer 413 at once, and tell the application the client left
            # (whatever it answers then is dropped).
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    refused = True
                    await _send_json(send, 413, self._too_large())
                    return {"type": "http.disconnect"}
            return message

        async def send_unless_refused(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, capped, send_unless_refused)


def _has_control(scope: Scope) -> bool:
    raw = scope.get("raw_path") or scope.get("path", "").encode("utf-8", "surrogateescape")
    query = scope.get("query_string", b"")
    for part in (raw, query):
        decoded = unquote_to_bytes(part.replace(b"+", b" ") if part is query else part)
        if any(b in _CONTROL for b in decoded):
            return True
    return False
