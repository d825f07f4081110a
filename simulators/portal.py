"""A consumption portal that receives pushes over real HTTP (stdlib server, no cgm code).

It keeps every push by its idempotency key (a repeated key is acknowledged, not stored
twice), can be told to fail the next N requests (503) or refuse them (422) to exercise
retries and rejections, and checks the document's shape on its own terms: 24 hours with a
source each, estimated hours naming their method.

    python -m simulators.portal --port 8099
"""

from __future__ import annotations

import argparse
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SOURCES = {"principal", "backup", "estimate", "manual"}


@dataclass
class PortalState:
    received: dict[str, dict[str, Any]] = field(default_factory=dict)  # by idempotency key
    requests: int = 0
    duplicates: int = 0
    fail_next: int = 0  # answer 503 to this many requests
    reject_next: int = 0  # answer 422 to this many requests
    lock: threading.Lock = field(default_factory=threading.Lock)

    def versions(self, meter: str, day: str) -> list[dict[str, Any]]:
        with self.lock:
            docs = [d for d in self.received.values() if (d["meter"], d["day"]) == (meter, day)]
        return sorted(docs, key=lambda d: d["version"])


def _problems(doc: Any) -> list[str]:
    if not isinstance(doc, dict):
        return ["not an object"]
    out = [f"missing {k}" for k in ("meter", "day", "version", "hours") if k not in doc]
    for h in doc.get("hours", []):
        if h.get("source") not in SOURCES:
            out.append(f"hour {h.get('hour_period')}: unknown source")
        if h.get("estimated") != (h.get("source") == "estimate"):
            out.append(f"hour {h.get('hour_period')}: estimated flag disagrees with source")
        if h.get("estimated") and not h.get("method"):
            out.append(f"hour {h.get('hour_period')}: estimated without a method")
    return out


def make_handler(state: PortalState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            key = self.headers.get("Idempotency-Key")
            with state.lock:
                state.requests += 1
                if state.fail_next > 0:
                    state.fail_next -= 1
                    return self._answer(503, {"error": "temporarily unavailable"})
                if state.reject_next > 0:
                    state.reject_next -= 1
                    return self._answer(422, {"error": "refused by the portal"})
            if not key:
                return self._answer(400, {"error": "Idempotency-Key header required"})
            try:
                doc = json.loads(raw)
            except ValueError:
                return self._answer(400, {"error": "body is not JSON"})
            problems = _problems(doc)
            if problems:
                return self._answer(422, {"error": "invalid document", "problems": problems})
            with state.lock:
                if key in state.received:
                    state.duplicates += 1
                    return self._answer(200, {"status": "duplicate", "key": key})
                state.received[key] = doc
            return self._answer(201, {"status": "stored", "key": key, "version": doc["version"]})

    return Handler


class PortalSimulator:
    """The portal on 127.0.0.1:``port`` (0: any free port) in a background thread."""

    def __init__(self, port: int = 0) -> None:
        self.state = PortalState()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(self.state))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/consumption/daily"

    def __enter__(self) -> PortalSimulator:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def main() -> None:
    p = argparse.ArgumentParser(description="consumption portal simulator (receives pushes)")
    p.add_argument("--port", type=int, default=8099)
    args = p.parse_args()
    sim = PortalSimulator(args.port)
    print(f"portal simulator receiving pushes at {sim.url}")
    sim.server.serve_forever()


if __name__ == "__main__":
    main()
