"""The documented cgm-meter/1 examples against both sides, which share no code.

``drivers/mqtt/schema/v1/examples/`` holds a request, two answers and a push signed with
the README's example secret ``reader-1``. Each must validate against its JSON Schema, and
the driver (``drivers/mqtt/protocol.py``) and the simulator (``simulators/mqtt/wire.py``)
must each verify and reproduce it on their own. A mistake in one side's encoder or
signature then fails here, instead of being agreed to by a mirror on the other side.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import pytest

from drivers.base import Channel
from drivers.mqtt import protocol as p
from simulators.mqtt import wire as w

SCHEMAS = Path(__file__).parents[2] / "drivers" / "mqtt" / "schema" / "v1"
SECRET = "reader-1"  # the README's example secret


def example(name: str) -> dict:
    return json.loads((SCHEMAS / "examples" / f"{name}.json").read_text())


@pytest.mark.parametrize(
    ("name", "schema"),
    [("request", "request"), ("response", "response"), ("error", "response"),
     ("profile", "profile")],
)  # fmt: skip
def test_examples_follow_their_schema(name: str, schema: str) -> None:
    doc = json.loads((SCHEMAS / f"{schema}.json").read_text())
    jsonschema.validate(example(name), doc, format_checker=jsonschema.FormatChecker())


def test_simulator_modules_do_not_import_the_drivers_codec() -> None:
    for module in ("server.py", "wire.py"):
        text = (Path(__file__).parents[2] / "simulators" / "mqtt" / module).read_text()
        assert "drivers.mqtt" not in text, module


def test_request_example_verifies_on_both_sides() -> None:
    req = example("request")
    assert p.verify_request(p.parse_request(json.dumps(req).encode()), SECRET)
    parsed = w.parse_request(json.dumps(req).encode())
    assert w.request_signature_ok(parsed, SECRET)
    assert not w.request_signature_ok(parsed, "reader-2")
    # The driver builds the same signature from the same fields.
    auth = req["auth"]
    again = p.sign(SECRET, p.signed_fields(req["serial"], req["command"], req["args"], auth))
    assert again == auth["sig"]


def test_answer_example_is_what_the_meter_signs_and_the_driver_accepts() -> None:
    res, nonce = example("response"), example("request")["auth"]["nonce"]
    assert p.verify_answer(res, SECRET, 1, nonce)
    unsigned = {k: v for k, v in res.items() if k != "auth"}
    assert w.sign_answer(unsigned, SECRET, 1, nonce) == res
    entries = p.decode_entries(p.parse_response(res, "M-001", "read_profile"))
    start = datetime(2025, 3, 1, 5, tzinfo=UTC)
    assert [(e.start, e.period, e.status) for e in entries] == [
        (start, timedelta(hours=1), 0),
        (start + timedelta(hours=1), timedelta(hours=1), 8),
    ]
    assert entries[0].values == {Channel.ACTIVE_IMPORT: 12.345, Channel.REACTIVE_IMPORT: 3.5}
    # The simulator encodes the same entries to the same JSON.
    rebuilt = [
        w.entry(e.start, e.end, e.status, {str(c): v for c, v in e.values.items()})
        for e in entries
    ]
    assert rebuilt == res["result"]["entries"]


def test_error_example_is_signed_too() -> None:
    err = example("error")
    assert p.verify_answer(err, SECRET, 1, err["auth"]["nonce"])
    unsigned = {k: v for k, v in err.items() if k != "auth"}
    assert w.sign_answer(unsigned, SECRET, 1, err["auth"]["nonce"]) == err
    with pytest.raises(p.MeterError, match="access_denied"):
        p.parse_response(err, "M-001", "set_clock")


def test_push_example_verifies_on_both_sides() -> None:
    push = example("profile")
    assert p.verify_push(push, SECRET)
    assert not p.verify_push(push, "reader-2")
    auth = push["auth"]
    fields = {k: v for k, v in push.items() if k != "auth"}
    fields.update(level=1, ts=auth["ts"], nonce=auth["nonce"])
    assert w.hmac_hex(SECRET, fields) == auth["sig"]
    # A push the simulator signs now verifies with the driver.
    body = {k: v for k, v in push.items() if k != "auth"}
    assert p.verify_push(w.sign_push(body, SECRET, datetime.now(UTC)), SECRET)


@pytest.mark.parametrize(
    "value",
    [
        {"b": 1, "a": [1.5, 0.1, 1e-07, 1e22, -0.0, 12.0], "c": None, "d": True},
        {"name": "Medidor Ñuñoa — 5 °C", "emoji": "\U0001f50c", "ctl": "a\u0001\u007f\"\\\n"},
        {"nested": {"z": {"y": [], "x": {}}, "a": 123456789012345678}},
    ],
)
def test_canonical_json_agrees_on_tricky_values(value: dict) -> None:
    assert w.dumps(value) == p.canonical(value)


def test_simulator_time_format_is_the_documented_one() -> None:
    t = datetime(2025, 3, 1, 5, 0, tzinfo=UTC)
    assert w.time_text(t) == "2025-03-01T05:00:00Z" == p.iso(t)
    assert p.parse_time(w.time_text(t + timedelta(microseconds=1500))) == t + timedelta(
        microseconds=1500
    )


def test_the_simulators_fast_push_encoding_is_its_canonical_json_and_verifies() -> None:
    """The gateway's push path (each field encoded once, entries by a template) gives the
    same bytes as its generic encoder, and the CGM's side accepts the signature."""
    start = datetime(2025, 3, 1, 5, tzinfo=UTC)
    values = {"reactive_import": 0.1, "active_import": 12.345, "active_export": 1e-07}
    entry = w.entry(start, start + timedelta(hours=1), 3, values)
    assert w.entry_text(start, start + timedelta(hours=1), 3, values) == w.encode(entry)
    body = {"schema": w.SCHEMA, "serial": "M-ü/1", "entries": [entry]}
    payload = w.push_payload(body, "reader-1", start)
    message = json.loads(payload)
    assert payload == w.dumps(message)  # canonical: sorted keys, no spaces, ASCII
    assert {k: v for k, v in message.items() if k != "auth"} == body
    assert p.verify_push(message, "reader-1")
    assert not p.verify_push(message, "reader-2")
    assert p.decode_entries(message)[0].values[Channel("active_import")] == 12.345


def test_the_simulators_fast_answer_signing_equals_its_generic_one() -> None:
    body = w.answer("M-1", "read_clock", result={"time": "2025-03-01T05:00:00Z", "status": 0})
    fast = w.signed_answer_bytes(body, "reader-1", 1, "n-1")
    assert fast == w.dumps(w.sign_answer(body, "reader-1", 1, "n-1"))
    assert p.verify_answer(json.loads(fast), "reader-1", 1, "n-1")
