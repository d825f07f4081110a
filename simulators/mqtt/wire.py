"""The meter's side of cgm-meter/1, written from the published contract alone.

Deliberately not ``drivers/mqtt/protocol.py``: a simulator that shared the driver's encoder
would agree with it about any mistake (a field left out of a signature, a unit swapped, a
time format), and the tests would pass on both. This module follows
``drivers/mqtt/README.md`` and ``schema/v1/``; ``tests/drivers/test_mqtt_contract.py``
checks the documented examples against both sides.

Canonical JSON for signatures (README, "Access levels"): object keys sorted, no whitespace,
non-ASCII escaped as ``\\uXXXX``, numbers as JSON numbers (floats in their shortest
round-trip form). The encoder below is hand-written for that reason.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
from datetime import UTC, datetime
from typing import Any

SCHEMA = "cgm-meter/1"
VERSION = "v1"
DEFAULT_PREFIX = "cgm"
ALG = "HMAC-SHA256"
UNITS = {
    "active_import": "kWh",
    "active_export": "kWh",
    "reactive_import": "kvarh",
    "reactive_export": "kvarh",
}
# README, "Commands": the level each command needs.
NEEDS_LEVEL = {
    "hello": 1,
    "identify": 1,
    "read_clock": 1,
    "set_clock": 2,
    "read_profile_config": 1,
    "read_profile": 1,
    "read_registers": 1,
}


class BadRequest(ValueError):
    """A request this meter cannot parse: answered ``bad_request``."""


# --- topics ----------------------------------------------------------------------------------


def meter_topic(prefix: str, serial: str, leaf: str) -> str:
    return f"{prefix}/{VERSION}/meters/{serial}/{leaf}"


def gateway_status_topic(prefix: str, client_id: str) -> str:
    return f"{prefix}/{VERSION}/gateways/{client_id}/status"


def serial_of_command_topic(prefix: str, topic: str) -> str | None:
    parts = topic.split("/")
    head = prefix.split("/")
    n = len(head)
    if parts[:n] != head or parts[n : n + 2] != [VERSION, "meters"] or len(parts) != n + 4:
        return None
    return parts[n + 2] if parts[n + 3] == "cmd" and parts[n + 2] else None


# --- encoding --------------------------------------------------------------------------------


def _string(s: str) -> str:
    # Printable ASCII without a quote or backslash (serials, units, commands, times: nearly
    # every string) is itself; the per-character escaping below is for the rest.
    if s.isascii() and s.isprintable() and '"' not in s and "\\" not in s:
        return f'"{s}"'
    out = ['"']
    for ch in s:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch in "\b\f\n\r\t":
            out.append({"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch])
        elif code < 0x20 or code > 0x7E:
            if code > 0xFFFF:  # a UTF-16 surrogate pair, as JSON escapes it
                code -= 0x10000
                out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
            else:
                out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _float(value: float) -> str:
    if not math.isfinite(value):
        raise ValueError("JSON has no NaN or infinity")
    return repr(value)


def _list(value: list[Any] | tuple[Any, ...]) -> str:
    return "[" + ",".join([encode(v) for v in value]) + "]"


def _object(value: dict[str, Any]) -> str:
    return "{" + ",".join([f"{_string(k)}:{encode(v)}" for k, v in sorted(value.items())]) + "}"


# Exact types first (one dict look-up per value instead of a chain of isinstance checks);
# subclasses fall through to the general rules below.
_BY_TYPE: dict[type, Any] = {
    str: _string,
    int: str,
    float: _float,
    bool: lambda v: "true" if v else "false",
    type(None): lambda v: "null",
    list: _list,
    tuple: _list,
    dict: _object,
}


def encode(value: Any) -> str:
    """Canonical JSON text of ``value``."""
    exact = _BY_TYPE.get(type(value))
    if exact is not None:
        return exact(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("JSON has no NaN or infinity")
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(encode(v) for v in value) + "]"
    if isinstance(value, dict):
        items = sorted(value.items())
        return "{" + ",".join(f"{_string(k)}:{encode(v)}" for k, v in items) + "}"
    raise TypeError(f"cannot encode {type(value).__name__}")


def dumps(value: Any) -> bytes:
    return encode(value).encode("ascii")


def hmac_hex(secret: str, fields: dict[str, Any]) -> str:
    return hmac.new(secret.encode("utf-8"), dumps(fields), hashlib.sha256).hexdigest()


def time_text(t: datetime) -> str:
    """ISO-8601 UTC with ``Z`` (README, "Payloads")."""
    t = t.astimezone(UTC)
    frac = f".{t.microsecond:06d}" if t.microsecond else ""
    return t.strftime("%Y-%m-%dT%H:%M:%S") + frac + "Z"


def parse_time_text(value: Any, what: str) -> datetime:
    if not isinstance(value, str):
        raise BadRequest(f"{what}: expected an ISO-8601 string")
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{what}: {value!r} is not ISO-8601") from None
    if t.tzinfo is None:
        raise BadRequest(f"{what}: {value!r} has no UTC offset")
    return t.astimezone(UTC)


# --- requests ------------------------------------------------------------------------------


def parse_request(payload: bytes) -> dict[str, Any]:
    """A request as documented in schema/v1/request.json, or :class:`BadRequest`."""
    try:
        req = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"not JSON: {exc}") from None
    if not isinstance(req, dict) or req.get("schema") != SCHEMA:
        raise BadRequest("not a cgm-meter/1 request")
    if not isinstance(req.get("serial"), str) or not isinstance(req.get("command"), str):
        raise BadRequest("request needs serial and command")
    if not isinstance(req.setdefault("args", {}), dict):
        raise BadRequest("args must be an object")
    auth = req.get("auth")
    if not isinstance(auth, dict) or auth.get("alg") != ALG or auth.get("level") not in (1, 2):
        raise BadRequest("auth needs alg HMAC-SHA256 and level 1 or 2")
    for key in ("ts", "nonce", "sig"):
        if not isinstance(auth.get(key), str):
            raise BadRequest(f"auth.{key} missing")
    parse_time_text(auth["ts"], "auth.ts")
    return req


def request_signature_ok(req: dict[str, Any], secret: str) -> bool:
    """README: the HMAC covers {schema, serial, command, args, level, client, ts, nonce}."""
    auth = req["auth"]
    fields = {
        "schema": req["schema"],
        "serial": req["serial"],
        "command": req["command"],
        "args": req["args"],
        "level": auth["level"],
        "client": auth.get("client"),
        "ts": auth["ts"],
        "nonce": auth["nonce"],
    }
    return hmac.compare_digest(hmac_hex(secret, fields), auth["sig"])


# --- answers and pushes --------------------------------------------------------------------


def answer(serial: str, command: str, *, result: dict | None = None, error: tuple | None = None
           ) -> dict[str, Any]:  # fmt: skip
    body: dict[str, Any] = {"schema": SCHEMA, "serial": serial, "command": command}
    if error is not None:
        body["error"] = {"code": error[0], "message": error[1]}
    else:
        body["result"] = result if result is not None else {}
    return body


def sign_answer(body: dict[str, Any], secret: str, level: int, nonce: str) -> dict[str, Any]:
    """README: the answer's HMAC covers the answer without ``auth``, plus the level and the
    nonce of the request it answers."""
    fields = {**body, "level": level, "nonce": nonce}
    return {**body, "auth": {"alg": ALG, "level": level, "nonce": nonce,
                             "sig": hmac_hex(secret, fields)}}  # fmt: skip


def signed_answer_bytes(body: dict[str, Any], secret: str, level: int, nonce: str) -> bytes:
    """``dumps(sign_answer(body, secret, level, nonce))``, each field encoded once for both
    the signed text and the message."""
    parts = {k: encode(v) for k, v in body.items()}
    signed = {**parts, "level": str(int(level)), "nonce": _string(nonce)}
    text = "{" + ",".join([f"{_string(k)}:{signed[k]}" for k in sorted(signed)]) + "}"
    sig = hmac.new(secret.encode("utf-8"), text.encode("ascii"), hashlib.sha256).hexdigest()
    parts["auth"] = encode({"alg": ALG, "level": level, "nonce": nonce, "sig": sig})
    return ("{" + ",".join([f"{_string(k)}:{parts[k]}" for k in sorted(parts)]) + "}").encode()


def sign_push(body: dict[str, Any], secret: str, now: datetime) -> dict[str, Any]:
    """README: a push's HMAC (level-1 secret) covers the message without ``auth``, plus
    ``level``, ``ts`` and ``nonce``."""
    ts, nonce = time_text(now), secrets.token_hex(16)
    sig = hmac_hex(secret, {**body, "level": 1, "ts": ts, "nonce": nonce})
    return {**body, "auth": {"alg": ALG, "level": 1, "ts": ts, "nonce": nonce, "sig": sig}}


def push_payload(body: dict[str, Any], secret: str, now: datetime) -> bytes:
    """``dumps(sign_push(body, secret, now))``, each field encoded once: the signed text and
    the message share the encoded fields (a gateway signs thousands of pushes an hour)."""
    return push_payload_text({k: encode(v) for k, v in body.items()}, secret, now)


def push_payload_text(parts: dict[str, str], secret: str, now: datetime) -> bytes:
    """:func:`push_payload` of a body whose fields are already canonical JSON texts."""
    ts, nonce = time_text(now), secrets.token_hex(16)
    signed = {**parts, "level": "1", "ts": _string(ts), "nonce": _string(nonce)}
    text = "{" + ",".join([f"{_string(k)}:{signed[k]}" for k in sorted(signed)]) + "}"
    sig = hmac.new(secret.encode("utf-8"), text.encode("ascii"), hashlib.sha256).hexdigest()
    parts = {**parts, "auth": encode({"alg": ALG, "level": 1, "ts": ts, "nonce": nonce,
                                      "sig": sig})}  # fmt: skip
    return ("{" + ",".join([f"{_string(k)}:{parts[k]}" for k in sorted(parts)]) + "}").encode()


def entry_text(start: datetime, end: datetime, status: int, values: dict[str, float]) -> str:
    """``encode(entry(start, end, status, values))`` without the generic encoder: the keys
    and units are fixed ASCII names, so only the times and numbers vary."""
    vals = ",".join([
        f'"{ch}":{{"unit":"{UNITS[ch]}","value":{_float(float(v))}}}'
        for ch, v in sorted(values.items())
    ])  # fmt: skip
    return (f'{{"end":"{time_text(end)}","start":"{time_text(start)}","status":{int(status)},'
            f'"values":{{{vals}}}}}')  # fmt: skip


def entry(start: datetime, end: datetime, status: int, values: dict[str, float]) -> dict:
    """One profile entry; a channel absent was not captured (never a zero)."""
    return {
        "start": time_text(start),
        "end": time_text(end),
        "status": int(status),
        "values": {ch: {"value": float(v), "unit": UNITS[ch]} for ch, v in values.items()},
    }


def status(serial: str, state: str, at: datetime) -> dict[str, Any]:
    return {"schema": SCHEMA, "serial": serial, "state": state, "at": time_text(at)}
