"""The ASIC's reading service, simulated: the same three endpoints the CGM uses.

* ``POST /token`` (form client_credentials) → ``{access_token, token_type, expires_in}``
* ``POST /lecturas`` (multipart ``codigoCGM`` + file ``archivo``, bearer token) →
  ``202 {mensajeId}``; a malformed upload (not a zip, more than ``max_documents`` documents,
  over ``max_bytes``, missing code) is refused at once with 400
* ``GET /lecturas/{mensajeId}`` → ``{mensajeId, estado, detalles}``, ``estado`` one of
  ``EnEspera``, ``Exitoso``, ``ExitosoConAdvertencia``, ``Error``

The file is either a zip of ``LecturaDiaria`` JSON documents (the legacy format) or one XML
``ArrayOfReadingReportItem`` (XM's published message, many frontiers in one file; parsed
here with ElementTree independently of the CGM's writer). XML items are answered one by one,
``archivo`` naming the item ``{BorderCode}_{P|R}_{yyyymmdd|yyyymm}``.

Documents are checked after the upload answers, as the real service does: structure,
24 periods per series, known frontier codes. Declared estimated periods give a warning.

Why h11 over a raw asyncio socket rather than a web framework: h11 (already installed, it is
httpx's HTTP/1.1 engine) gives correct HTTP framing and keep-alive with no new dependency,
and a framework would add nothing the three endpoints need. Multipart bodies are parsed with
the standard library's ``email`` parser.

Faults (attributes, changeable while running): ``fail_next`` answers the next N requests to
upload/status with ``fail_status`` (5xx); ``hang_next`` holds the next N such requests for
``hang_s`` without answering (a client timeout); ``reject`` names frontier codes or file
names whose documents are rejected; ``processing_s`` delays the final state (slow
processing); ``token_ttl_s`` is the lifetime of new tokens, and :meth:`expire_tokens`
invalidates every token issued so far.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import secrets
import time
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11

PERIODS = 24
_REQUIRED = ("tipoReporte", "frtID", "duracionPeriodo", "fechaInicio", "fechaFin")
_SERIES = ("lecturas", "lecturasExportacion", "lecturasReactiva", "lecturasReactivaExportacion")


@dataclass
class Message:
    id: str
    cgm_code: str
    zip_name: str
    documents: dict[str, dict[str, Any]]  # file name → parsed document (or {} if unreadable)
    state: str = "EnEspera"
    details: list[dict[str, str]] = field(default_factory=list)


class AsicSimulator:
    def __init__(
        self,
        *,
        client_id: str = "cgm",
        client_secret: str = "secret",
        known_frontiers: set[str] | None = None,
        cgm_code: str | None = None,
        max_documents: int = 5,
        max_bytes: int = 25 * 1024 * 1024,
        token_ttl_s: float = 3600.0,
        processing_s: float = 0.0,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.known_frontiers = known_frontiers if known_frontiers is not None else set()
        self.cgm_code = cgm_code
        self.max_documents = max_documents
        self.max_bytes = max_bytes
        self.token_ttl_s = token_ttl_s
        self.processing_s = processing_s
        # faults
        self.fail_next = 0
        self.fail_status = 503
        self.hang_next = 0
        self.hang_s = 30.0
        self.reject: set[str] = set()
        # what happened
        self.messages: dict[str, Message] = {}
        self.tokens_issued = 0
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self._tokens: dict[str, float] = {}
        self._ids = itertools.count(1)
        self._prefix = secrets.token_hex(3).upper()  # ids differ across restarts
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._server = await asyncio.start_server(self._connection, host, port)
        h, p = self._server.sockets[0].getsockname()[:2]
        return f"http://{h}:{p}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._tasks):
                t.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def start_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve from a thread with its own event loop (for synchronous callers, e.g. a CLI
        test that runs ``asyncio.run`` itself); stop with :meth:`stop_thread`."""
        import threading

        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        return asyncio.run_coroutine_threadsafe(self.start(host, port), self._loop).result(10)

    def stop_thread(self) -> None:
        asyncio.run_coroutine_threadsafe(self.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)

    def expire_tokens(self) -> None:
        """Every token issued so far stops being valid (as if it had expired)."""
        self._tokens.clear()

    def received(self) -> list[dict[str, Any]]:
        """Every document received, in order (including rejected ones)."""
        return [d for m in self.messages.values() for d in m.documents.values()]

    # --- HTTP ----------------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = await self._read_request(conn, reader)
                if request is None:
                    break
                status, payload = await self._route(request, body)
                path = request.target.decode()
                self.requests.append((request.method.decode(), path, status))
                data = json.dumps(payload).encode()
                headers = [("content-type", "application/json"), ("content-length", str(len(data)))]
                writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
                writer.write(conn.send(h11.Data(data=data)))
                writer.write(conn.send(h11.EndOfMessage()))
                await writer.drain()
                if conn.our_state is h11.MUST_CLOSE:
                    break
                conn.start_next_cycle()
        except (h11.ProtocolError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader
    ) -> tuple[h11.Request | None, bytes]:
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                if not data and request is None:
                    return None, b""
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return request, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                return None, b""

    async def _route(self, req: h11.Request, body: bytes) -> tuple[int, dict[str, Any]]:
        method = req.method.decode()
        path = urlsplit(req.target.decode()).path.rstrip("/")
        headers = {k.decode().lower(): v.decode() for k, v in req.headers}
        if method == "POST" and path == "/token":
            return self._token(body)
        if path == "/lecturas" or path.startswith("/lecturas/"):
            if self.hang_next > 0:
                self.hang_next -= 1
                await asyncio.sleep(self.hang_s)
                return 504, {"mensaje": "hung"}
            if self.fail_next > 0:
                self.fail_next -= 1
                return self.fail_status, {"mensaje": "falla inyectada"}
            if not self._authorized(headers):
                return 401, {"mensaje": "token inválido o vencido"}
            if method == "POST" and path == "/lecturas":
                return self._upload(headers, body)
            if method == "GET" and path.startswith("/lecturas/"):
                msg = self.messages.get(path.rsplit("/", 1)[1])
                if msg is None:
                    return 404, {"mensaje": "mensaje desconocido"}
                return 200, {"mensajeId": msg.id, "estado": msg.state, "detalles": msg.details}
        return 404, {"mensaje": "no existe"}

    def _token(self, body: bytes) -> tuple[int, dict[str, Any]]:
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        if (
            form.get("grant_type") != "client_credentials"
            or form.get("client_id") != self.client_id
            or form.get("client_secret") != self.client_secret
        ):
            return 401, {"error": "invalid_client"}
        token = secrets.token_urlsafe(24)
        self._tokens[token] = time.monotonic() + self.token_ttl_s
        self.tokens_issued += 1
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": self.token_ttl_s}

    def _authorized(self, headers: dict[str, str]) -> bool:
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            return False
        expires = self._tokens.get(auth[7:])
        return expires is not None and time.monotonic() < expires

    def _upload(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        ctype = headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            return 400, {"mensaje": "se espera multipart/form-data"}
        msg = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {ctype}\r\n\r\n".encode() + body)
        fields: dict[str, tuple[str | None, bytes]] = {}
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            fields[str(name)] = (part.get_filename(), part.get_payload(decode=True) or b"")
        code = fields.get("codigoCGM", (None, b""))[1].decode()
        if not code:
            return 400, {"mensaje": "falta codigoCGM"}
        if self.cgm_code is not None and code != self.cgm_code:
            return 400, {"mensaje": f"codigoCGM desconocido {code}"}
        if "archivo" not in fields:
            return 400, {"mensaje": "falta archivo"}
        zip_name, payload = fields["archivo"]
        if len(payload) > self.max_bytes:
            return 400, {"mensaje": f"el zip excede {self.max_bytes} bytes"}
        if payload.lstrip().startswith(b"<"):
            return self._upload_xml(code, zip_name or "", payload)
        try:
            with zipfile.ZipFile(io.BytesIO(payload)) as zf:
                names = zf.namelist()
                if len(names) > self.max_documents:
                    return 400, {"mensaje": f"el zip trae {len(names)} documentos (máx. "
                                            f"{self.max_documents})"}  # fmt: skip
                docs: dict[str, dict[str, Any]] = {}
                raw: dict[str, bytes] = {n: zf.read(n) for n in names}
        except zipfile.BadZipFile:
            return 400, {"mensaje": "archivo no es un zip"}
        for n, data in raw.items():
            try:
                doc = json.loads(data)
                docs[n] = doc if isinstance(doc, dict) else {}
            except ValueError:
                docs[n] = {}
        mid = f"MSG{self._prefix}{next(self._ids):06d}"
        message = Message(mid, code, zip_name or "", docs)
        self.messages[mid] = message
        task = asyncio.get_running_loop().create_task(self._process(message, raw))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return 202, {"mensajeId": mid}

    def _upload_xml(self, code: str, name: str, payload: bytes) -> tuple[int, dict[str, Any]]:
        try:
            root = ET.fromstring(payload)
        except ET.ParseError as exc:
            return 400, {"mensaje": f"XML mal formado: {exc}"}
        if root.tag != "ArrayOfReadingReportItem":
            return 400, {"mensaje": f"se espera ArrayOfReadingReportItem, no {root.tag}"}
        docs: dict[str, dict[str, Any]] = {}
        for n, el in enumerate(root, 1):
            item = _xml_item(el)
            key = item.get("_name") or f"item{n}"
            docs[key] = item
        mid = f"MSG{self._prefix}{next(self._ids):06d}"
        message = Message(mid, code, name, docs)
        self.messages[mid] = message
        task = asyncio.get_running_loop().create_task(
            self._process(message, dict.fromkeys(docs, b""), xml=True)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return 202, {"mensajeId": mid}

    def check_item(self, name: str, item: dict[str, Any]) -> dict[str, str]:
        """The verdict on one ReadingReportItem."""
        if item.get("_error"):
            return {"archivo": name, "estado": "Error", "mensaje": item["_error"]}
        if item["BorderCode"] not in self.known_frontiers:
            return {"archivo": name, "estado": "Error",
                    "mensaje": f"frontera desconocida {item['BorderCode']}"}  # fmt: skip
        if item["BorderCode"] in self.reject or name in self.reject:
            return {"archivo": name, "estado": "Error",
                    "mensaje": "documento rechazado (falla inyectada)"}  # fmt: skip
        return {"archivo": name, "estado": "Exitoso", "mensaje": ""}

    async def _process(self, msg: Message, raw: dict[str, bytes], xml: bool = False) -> None:
        if self.processing_s:
            await asyncio.sleep(self.processing_s)
        check = self.check_item if xml else self.check
        details = [check(name, msg.documents[name]) for name in raw]
        states = {d["estado"] for d in details}
        msg.details = details
        if "Error" in states:
            msg.state = "Error"
        elif "ExitosoConAdvertencia" in states:
            msg.state = "ExitosoConAdvertencia"
        else:
            msg.state = "Exitoso"

    def check(self, name: str, doc: dict[str, Any]) -> dict[str, str]:
        """The verdict on one document."""

        def error(why: str) -> dict[str, str]:
            return {"archivo": name, "estado": "Error", "mensaje": why}

        if not doc:
            return error("documento ilegible")
        missing = [k for k in _REQUIRED if k not in doc]
        if missing:
            return error("faltan campos: " + ", ".join(missing))
        if doc["tipoReporte"] != "LecturaDiaria" or doc["duracionPeriodo"] != "PT1H":
            return error("tipoReporte o duracionPeriodo no soportado")
        frt = doc["frtID"]
        if frt not in self.known_frontiers:
            return error(f"frontera desconocida {frt}")
        if frt in self.reject or name in self.reject:
            return error("documento rechazado (falla inyectada)")
        series = [k for k in _SERIES if k in doc]
        if not any(k in doc for k in _SERIES[:2]):
            return error("sin serie de energía activa")
        for key in series:
            entries = doc[key]
            periods = [e.get("periodo") for e in entries if isinstance(e, dict)]
            if periods != list(range(1, PERIODS + 1)):
                return error(f"{key}: se esperan los periodos 1..24")
            if not all(isinstance(e.get("valor"), int | float) for e in entries):
                return error(f"{key}: valor no numérico")
        if doc.get("periodosEstimados"):
            return {"archivo": name, "estado": "ExitosoConAdvertencia",
                    "mensaje": "contiene periodos estimados"}  # fmt: skip
        return {"archivo": name, "estado": "Exitoso", "mensaje": ""}


_ITEM_FIELDS = ("BorderCode", "IsBackup", "StartDate", "ReadingInterval", "ReadingCount",
                "Readings")  # fmt: skip


def _xml_item(el: ET.Element) -> dict[str, Any]:
    """One ReadingReportItem as a dict, or ``{"_error": why}``; the rules of XM's example:
    the six fields in order, IsBackup a boolean, a local day start, 60-minute interval, 24
    (daily-hourly) or 1 (monthly) readings, each a non-negative ``<double>``."""
    if el.tag != "ReadingReportItem":
        return {"_error": f"elemento inesperado {el.tag}"}
    kids = list(el)
    tags = tuple(k.tag for k in kids)
    if tags != _ITEM_FIELDS:
        return {"_error": f"campos {tags}"}
    f = dict(zip(tags, kids, strict=True))
    code = (f["BorderCode"].text or "").strip()
    backup = f["IsBackup"].text
    start = f["StartDate"].text or ""
    if backup not in ("true", "false"):
        return {"_error": f"IsBackup inválido {backup!r}"}
    try:
        day = datetime.strptime(start, "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return {"_error": f"StartDate inválida {start!r}"}
    if day.time() != datetime.min.time():
        return {"_error": "StartDate debe ser el inicio del día"}
    if f["ReadingInterval"].text != "60":
        return {"_error": "ReadingInterval debe ser 60"}
    values = []
    for d in f["Readings"]:
        if d.tag != "double":
            return {"_error": f"lectura {d.tag} no es double"}
        try:
            values.append(float(d.text or ""))
        except ValueError:
            return {"_error": f"lectura no numérica {d.text!r}"}
    count = f["ReadingCount"].text
    if count not in ("24", "1") or int(count) != len(values):
        return {"_error": f"ReadingCount {count} con {len(values)} lecturas"}
    if any(v < 0 or v != v for v in values):
        return {"_error": "lectura negativa o no numérica"}
    stamp = f"{day:%Y%m%d}" if count == "24" else f"{day:%Y%m}"
    return {"_name": f"{code}_{'R' if backup == 'true' else 'P'}_{stamp}", "BorderCode": code,
            "IsBackup": backup == "true", "StartDate": start, "Readings": values}  # fmt: skip


async def main() -> None:  # pragma: no cover - manual use
    import argparse

    ap = argparse.ArgumentParser(description="simulated ASIC reading service")
    ap.add_argument("--port", type=int, default=8700)
    ap.add_argument("--frontiers", default="", help="known frontier codes, comma separated")
    args = ap.parse_args()
    sim = AsicSimulator(known_frontiers={c for c in args.frontiers.split(",") if c})
    print("ASIC simulator on", await sim.start(port=args.port))
    await asyncio.Event().wait()


if __name__ == "__main__":  # pragma: no cover
    asyncio.run(main())
