"""The cgm-meter/1 MQTT contract, the CGM's side of it.

The published contract is ``drivers/mqtt/README.md``, the JSON Schemas in
``drivers/mqtt/schema/v1/`` and the signed examples in ``schema/v1/examples/``. The simulator
has its own encoder (``simulators/mqtt/wire.py``) written from that contract, so that a
mistake here cannot hide behind the same mistake there; the examples are checked against
both. The version
is both in the topics (``{prefix}/v1/...``) and in every payload (``"schema": "cgm-meter/1"``)
so that a v2 can run side by side on one broker.

Parsing is strict: anything that does not match the schema raises :class:`PayloadError`,
which the driver turns into ``ProtocolError`` — a malformed answer is never read as a value.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from drivers.base import ALL_CHANNELS, AccessLevel, Channel, ProfileConfig, ProfileEntry

SCHEMA = "cgm-meter/1"
TOPIC_VERSION = "v1"
DEFAULT_PREFIX = "cgm"
SIGNATURE_ALG = "HMAC-SHA256"

# How a meter's answers and pushed entries are authenticated (registry param ``answer_auth``):
# a signature with the meter's secret (the default), or the broker's per-meter ACL, which
# lets only the meter's own account publish on the topics that carry its serial.
AUTH_SIGNATURE = "signature"
AUTH_BROKER_ACL = "broker_acl"
ANSWER_AUTH_MODES = (AUTH_SIGNATURE, AUTH_BROKER_ACL)

# Commands and the art. 17 level each needs.
COMMAND_LEVEL: dict[str, AccessLevel] = {
    "hello": AccessLevel.READ,
    "identify": AccessLevel.READ,
    "read_clock": AccessLevel.READ,
    "set_clock": AccessLevel.CONFIGURE,
    "read_profile_config": AccessLevel.READ,
    "read_profile": AccessLevel.READ,
    "read_registers": AccessLevel.READ,
}

# Error codes a meter may answer with (``error.code``).
ERROR_CODES = ("auth", "access_denied", "bad_request", "unsupported", "internal")


class PayloadError(ValueError):
    """A payload that is not valid JSON or does not follow cgm-meter/1."""


# --- topics --------------------------------------------------------------------------------


def _check_level(name: str, value: str) -> str:
    if not value or any(c in value for c in "/+#\0"):
        raise ValueError(f"{name} {value!r} cannot be an MQTT topic level")
    return value


def command_topic(prefix: str, serial: str) -> str:
    return f"{prefix}/{TOPIC_VERSION}/meters/{_check_level('serial', serial)}/cmd"


def profile_topic(prefix: str, serial: str) -> str:
    return f"{prefix}/{TOPIC_VERSION}/meters/{_check_level('serial', serial)}/profile"


def all_profiles_filter(prefix: str) -> str:
    """Subscription filter for every meter's pushed entries."""
    return f"{prefix}/{TOPIC_VERSION}/meters/+/profile"


def status_topic(prefix: str, serial: str) -> str:
    return f"{prefix}/{TOPIC_VERSION}/meters/{_check_level('serial', serial)}/status"


def response_topic(prefix: str, client_id: str, serial: str) -> str:
    """Where meter ``serial`` answers this client: the serial is in the topic so that a
    broker ACL can let only that meter's account publish there."""
    client = _check_level("client id", client_id)
    return f"{prefix}/{TOPIC_VERSION}/clients/{client}/res/{_check_level('serial', serial)}"


def responses_filter(prefix: str, client_id: str) -> str:
    return f"{prefix}/{TOPIC_VERSION}/clients/{_check_level('client id', client_id)}/res/+"


def all_status_filter(prefix: str) -> str:
    return f"{prefix}/{TOPIC_VERSION}/meters/+/status"


def response_topic_serial(prefix: str, client_id: str, topic: str) -> str | None:
    head = f"{prefix}/{TOPIC_VERSION}/clients/{client_id}/res/"
    serial = topic[len(head) :] if topic.startswith(head) else ""
    return serial if serial and "/" not in serial else None


def meter_topic_serial(prefix: str, topic: str, leaf: str) -> str | None:
    """The serial in ``{prefix}/v1/meters/{serial}/{leaf}``, or None if it is not one."""
    head = f"{prefix}/{TOPIC_VERSION}/meters/"
    if not topic.startswith(head) or not topic.endswith("/" + leaf):
        return None
    serial = topic[len(head) : -len(leaf) - 1]
    return serial if serial and "/" not in serial else None


# --- values --------------------------------------------------------------------------------


def iso(t: datetime) -> str:
    """ISO-8601 UTC with a ``Z``: the only time format on the wire."""
    if t.tzinfo is None:
        raise ValueError("naive datetime on the wire")
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(value: object, what: str = "time") -> datetime:
    if not isinstance(value, str):
        raise PayloadError(f"{what}: expected an ISO-8601 string")
    try:
        t = datetime.fromisoformat(value)
    except ValueError as exc:
        raise PayloadError(f"{what}: {value!r} is not ISO-8601") from exc
    if t.tzinfo is None:
        raise PayloadError(f"{what}: {value!r} has no UTC offset")
    return t.astimezone(UTC)


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PayloadError(f"{what}: expected a finite number")
    return float(value)


def _obj(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PayloadError(f"{what}: expected an object")
    return value


def canonical(obj: Mapping[str, Any]) -> bytes:
    """The byte string that is signed: sorted keys, no spaces, ASCII."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def dumps(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def loads(payload: bytes) -> dict[str, Any]:
    """Decode a cgm-meter/1 payload (any kind) and check its schema tag."""
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"not JSON: {exc}") from exc
    obj = _obj(obj, "payload")
    if obj.get("schema") != SCHEMA:
        raise PayloadError(f"schema {obj.get('schema')!r}, expected {SCHEMA!r}")
    return obj


# --- requests and their signature ----------------------------------------------------------


def signed_fields(
    serial: str, command: str, args: Mapping[str, Any], auth: Mapping[str, Any]
) -> dict[str, Any]:
    """What the HMAC covers: everything in the request except the signature itself."""
    return {
        "schema": SCHEMA,
        "serial": serial,
        "command": command,
        "args": dict(args),
        "level": auth["level"],
        "client": auth.get("client"),
        "ts": auth["ts"],
        "nonce": auth["nonce"],
    }


def sign(secret: str, fields: Mapping[str, Any]) -> str:
    return hmac.new(secret.encode(), canonical(fields), hashlib.sha256).hexdigest()


def build_request(
    serial: str,
    command: str,
    args: Mapping[str, Any],
    level: AccessLevel,
    secret: str,
    client: str | None,
    now: datetime,
) -> dict[str, Any]:
    auth: dict[str, Any] = {
        "alg": SIGNATURE_ALG,
        "level": int(level),
        "client": client,
        "ts": iso(now),
        "nonce": secrets.token_hex(16),
    }
    auth["sig"] = sign(secret, signed_fields(serial, command, args, auth))
    return {
        "schema": SCHEMA,
        "serial": serial,
        "command": command,
        "args": dict(args),
        "auth": auth,
    }


def verify_request(request: Mapping[str, Any], secret: str) -> bool:
    auth = request["auth"]
    expected = sign(
        secret, signed_fields(request["serial"], request["command"], request["args"], auth)
    )
    return hmac.compare_digest(expected, str(auth.get("sig", "")))


def parse_request(payload: bytes) -> dict[str, Any]:
    req = loads(payload)
    if not isinstance(req.get("serial"), str) or not isinstance(req.get("command"), str):
        raise PayloadError("request needs serial and command")
    _obj(req.get("args", {}), "args")
    auth = _obj(req.get("auth"), "auth")
    if auth.get("alg") != SIGNATURE_ALG or auth.get("level") not in (1, 2):
        raise PayloadError("auth needs alg HMAC-SHA256 and level 1 or 2")
    for key in ("ts", "nonce", "sig"):
        if not isinstance(auth.get(key), str):
            raise PayloadError(f"auth.{key} missing")
    parse_time(auth["ts"], "auth.ts")
    return req


# --- responses -----------------------------------------------------------------------------


def answer_signed_fields(answer: Mapping[str, Any], level: int, nonce: str) -> dict[str, Any]:
    """What an answer's HMAC covers: the answer less ``auth``, the level of the request it
    answers and that request's nonce (so an old answer cannot be replayed to a new request)."""
    fields = {k: v for k, v in answer.items() if k != "auth"}
    fields["level"] = level
    fields["nonce"] = nonce
    return fields


def sign_answer(answer: Mapping[str, Any], secret: str, level: int, nonce: str) -> dict[str, Any]:
    signed = dict(answer)
    sig = sign(secret, answer_signed_fields(answer, level, nonce))
    signed["auth"] = {"alg": SIGNATURE_ALG, "level": level, "nonce": nonce, "sig": sig}
    return signed


def verify_answer(answer: Mapping[str, Any], secret: str, level: int, nonce: str) -> bool:
    """True when the answer carries a valid signature made with ``secret`` for the request
    of ``level`` and ``nonce``."""
    auth = answer.get("auth")
    if not isinstance(auth, dict) or auth.get("alg") != SIGNATURE_ALG:
        return False
    if auth.get("level") != level or auth.get("nonce") != nonce:
        return False
    expected = sign(secret, answer_signed_fields(answer, level, nonce))
    return hmac.compare_digest(expected, str(auth.get("sig", "")))


def result_response(serial: str, command: str, result: Mapping[str, Any]) -> dict[str, Any]:
    return {"schema": SCHEMA, "serial": serial, "command": command, "result": dict(result)}


def error_response(serial: str, command: str, code: str, message: str) -> dict[str, Any]:
    assert code in ERROR_CODES, code
    return {
        "schema": SCHEMA,
        "serial": serial,
        "command": command,
        "error": {"code": code, "message": message},
    }


def parse_response(payload: bytes | Mapping[str, Any], serial: str, command: str) -> dict[str, Any]:
    """The ``result`` object, or raise :class:`MeterError` for an ``error`` answer."""
    res = loads(payload) if isinstance(payload, bytes | bytearray) else dict(payload)
    if res.get("serial") != serial or res.get("command") != command:
        raise PayloadError(
            f"answer for {res.get('serial')!r}/{res.get('command')!r}, "
            f"expected {serial!r}/{command!r}"
        )
    if "error" in res:
        err = _obj(res["error"], "error")
        code, message = err.get("code"), err.get("message", "")
        if code not in ERROR_CODES or not isinstance(message, str):
            raise PayloadError(f"bad error object {err!r}")
        raise MeterError(code, message)
    return _obj(res.get("result"), "result")


class MeterError(Exception):
    """A well-formed ``error`` answer from the meter."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# --- profile entries -----------------------------------------------------------------------


def encode_entry(entry: ProfileEntry) -> dict[str, Any]:
    return {
        "start": iso(entry.start),
        "end": iso(entry.end),
        "status": int(entry.status),
        "values": {
            ch.value: {"value": float(v), "unit": ch.unit} for ch, v in entry.values.items()
        },
    }


_CHANNELS = {ch.value: ch for ch in Channel}
_TIMES: dict[str, datetime] = {}  # recent entry times: every meter sends the same hours


def _entry_time(value: object, what: str) -> datetime:
    t = _TIMES.get(value) if isinstance(value, str) else None
    if t is None:
        t = parse_time(value, what)
        if len(_TIMES) >= 4096:
            _TIMES.clear()
        _TIMES[value] = t  # type: ignore[index]
    return t


def decode_entry(obj: object) -> ProfileEntry:
    e = _obj(obj, "entry")
    start, end = _entry_time(e.get("start"), "entry.start"), _entry_time(e.get("end"), "entry.end")
    if end <= start:
        raise PayloadError("entry ends before it starts")
    status = e.get("status", 0)
    if isinstance(status, bool) or not isinstance(status, int) or not 0 <= status <= 255:
        raise PayloadError("entry.status must be 0..255")
    values: dict[Channel, float] = {}
    for name, item in _obj(e.get("values"), "entry.values").items():
        ch = _CHANNELS.get(name)
        if ch is None:
            raise PayloadError(f"unknown channel {name!r}")
        if not isinstance(item, dict):
            raise PayloadError(f"values.{name}: expected an object")
        if item.get("unit") != ch.unit:
            raise PayloadError(f"{name} in {item.get('unit')!r}, expected {ch.unit}")
        values[ch] = _number(item.get("value"), f"values.{name}.value")
    return ProfileEntry(start, end - start, values, status)


VALUES_INTERVAL = "interval"  # each entry's values are the energy of its interval
VALUES_CUMULATIVE = "cumulative"  # the registers' readings at each entry's end


def values_kind(obj: Mapping[str, Any]) -> str:
    """What a profile answer's, push's or profile configuration's values are."""
    kind = obj.get("values", VALUES_INTERVAL)
    if kind not in (VALUES_INTERVAL, VALUES_CUMULATIVE):
        raise PayloadError(f"values must be {VALUES_INTERVAL!r} or {VALUES_CUMULATIVE!r}")
    return str(kind)


def decode_entries(result: Mapping[str, Any]) -> list[ProfileEntry]:
    entries = result.get("entries")
    if not isinstance(entries, list):
        raise PayloadError("entries must be an array")
    return [decode_entry(e) for e in entries]


def profile_message(serial: str, entries: list[ProfileEntry]) -> dict[str, Any]:
    return {"schema": SCHEMA, "serial": serial, "entries": [encode_entry(e) for e in entries]}


def push_signed_fields(message: Mapping[str, Any], auth: Mapping[str, Any]) -> dict[str, Any]:
    """What a pushed message's HMAC (level-1 secret) covers: everything but ``auth.sig``."""
    fields = {k: v for k, v in message.items() if k != "auth"}
    fields.update(level=auth.get("level"), ts=auth.get("ts"), nonce=auth.get("nonce"))
    return fields


def sign_push(message: Mapping[str, Any], secret: str, now: datetime) -> dict[str, Any]:
    auth: dict[str, Any] = {
        "alg": SIGNATURE_ALG, "level": 1, "ts": iso(now), "nonce": secrets.token_hex(16)
    }  # fmt: skip
    auth["sig"] = sign(secret, push_signed_fields(message, auth))
    return {**message, "auth": auth}


def verify_push(message: Mapping[str, Any], secret: str) -> bool:
    auth = message.get("auth")
    if not isinstance(auth, dict) or auth.get("alg") != SIGNATURE_ALG or auth.get("level") != 1:
        return False
    expected = sign(secret, push_signed_fields(message, auth))
    return hmac.compare_digest(expected, str(auth.get("sig", "")))


def status_message(serial: str, state: str, at: datetime) -> dict[str, Any]:
    return {"schema": SCHEMA, "serial": serial, "state": state, "at": iso(at)}


def encode_profile_config(cfg: ProfileConfig) -> dict[str, Any]:
    return {
        "capture_period_s": int(cfg.capture_period.total_seconds()),
        "depth": cfg.depth,
        "channels": [ch.value for ch in cfg.channels],
    }


def decode_profile_config(result: Mapping[str, Any]) -> ProfileConfig:
    period, depth, channels = (
        result.get("capture_period_s"),
        result.get("depth"),
        result.get("channels"),
    )
    if isinstance(period, bool) or not isinstance(period, int) or period <= 0:
        raise PayloadError("capture_period_s must be a positive integer")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise PayloadError("depth must be a non-negative integer")
    if not isinstance(channels, list) or not all(c in ALL_CHANNELS for c in channels):
        raise PayloadError("channels must list known channels")
    return ProfileConfig(timedelta(seconds=period), depth, tuple(Channel(c) for c in channels))


def decode_registers(result: Mapping[str, Any]) -> list[tuple[Channel, float, str]]:
    regs = result.get("registers")
    if not isinstance(regs, list):
        raise PayloadError("registers must be an array")
    out = []
    for item in regs:
        r = _obj(item, "register")
        try:
            ch = Channel(r.get("channel"))
        except ValueError as exc:
            raise PayloadError(f"unknown channel {r.get('channel')!r}") from exc
        if r.get("unit") != ch.unit:
            raise PayloadError(f"register {ch} in {r.get('unit')!r}, expected {ch.unit}")
        out.append((ch, _number(r.get("value"), f"register {ch}"), ch.unit))
    return out


def decode_identity(result: Mapping[str, Any]) -> tuple[str, str, str, str]:
    keys = ("serial", "manufacturer", "model", "firmware")
    if not all(isinstance(result.get(k), str) for k in keys):
        raise PayloadError("identity needs serial, manufacturer, model, firmware strings")
    return tuple(result[k] for k in keys)  # type: ignore[return-value]


def now_utc() -> datetime:
    return datetime.now(UTC)
