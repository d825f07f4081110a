"""Serve the API inside ``cgm run``: uvicorn in a process of its own (:class:`ApiProcess`).

The socket is bound by the service before the API starts, so a taken port is a clear error
at start-up (uvicorn itself would call ``sys.exit``). :class:`ApiThread` serves the same
application on a thread of the calling process (tests and benchmarks that embed it).

Why a process (measured in ``benchmarks/api.py``): on the service's event loop a request
waited behind the collector's callbacks (p99 of a one-row registry read over a second
during a cycle); on a thread of its own it still waited for the interpreter lock that the
collector and VEE hold, every database round trip and socket wake-up paying for a switch.
In its own process the API shares nothing with the collector but the CPUs and the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import uvicorn
from psycopg_pool import AsyncConnectionPool

from cgm.api.app import create_app
from cgm.config import PortTaken, Settings
from cgm.service import Service

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 10.0
START_TIMEOUT_S = 120.0  # a cold start imports the whole application; slow on a busy host
SCHEDULER_STALE_S = 30.0  # /healthz: the service's heartbeat older than this is "stopped"


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # SIGINT/SIGTERM belong to the service (Service.run), which stops us on_stop.
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    try:
        sock = socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        raise PortTaken(
            f"the API cannot listen on {host}:{port} ({exc.strerror or exc}); "
            "set CGM_API_PORT (0 disables the API)"
        ) from None
    # Accepted connections inherit TCP_NODELAY. asyncio sets it itself only on sockets made
    # with proto IPPROTO_TCP, which create_server's are not (proto 0): without it a response
    # written as headers then body waited for the client's delayed ACK, about 40 ms on Linux
    # (benchmarks/README.md, portal pull).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


# A connection handed back this recently is taken as working: the check is a round trip to
# the server, which on a busy host cost as much as the request's own query. One idle for
# longer (the database may have restarted meanwhile) is checked before use.
CHECK_IDLE_S = 2.0


async def _returned(conn: psycopg.AsyncConnection) -> None:
    conn._cgm_returned = time.monotonic()  # type: ignore[attr-defined]


async def _check_if_idle(conn: psycopg.AsyncConnection) -> None:
    returned = getattr(conn, "_cgm_returned", None)
    if returned is None or time.monotonic() - returned > CHECK_IDLE_S or conn.broken:
        await AsyncConnectionPool.check_connection(conn)


def make_pool(db_url: str) -> AsyncConnectionPool:
    """The API's own pool (autocommit: a failed login is counted though the request fails)."""
    return AsyncConnectionPool(
        db_url,
        min_size=2,
        max_size=4,
        open=False,
        kwargs={"autocommit": True},
        check=_check_if_idle,
        reset=_returned,
    )


def _http_impl() -> str:
    """uvicorn's C parser (httptools) when installed: a fraction of h11's CPU per request."""
    try:
        import httptools  # noqa: F401
    except ImportError:
        return "h11"
    return "httptools"


async def serve(
    db_url: str,
    settings: Settings,
    sock: socket.socket,
    scheduler_running: Callable[[], bool] | None,
    server_class: type[uvicorn.Server] = uvicorn.Server,
    on_started: Callable[[uvicorn.Server], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """Pool, application, access-cache listener and uvicorn on ``sock`` until the server
    exits (or ``should_stop`` says so, polled every second)."""
    pool = make_pool(db_url)
    try:
        await pool.open(wait=True, timeout=30)
        app = create_app(db_url, pool, settings=settings, scheduler_running=scheduler_running)
        config = uvicorn.Config(
            app,
            http=_http_impl(),
            log_config=None,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=5,
        )
        server = server_class(config)
        async with app.state.auth.cache.listening(db_url):
            task = asyncio.create_task(server.serve(sockets=[sock]))
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no event
                if task.done():
                    task.result()
                    raise RuntimeError("the API server stopped during start-up")
                await asyncio.sleep(0.02)
            if on_started is not None:
                on_started(server)
            while not task.done():
                await asyncio.wait([task], timeout=1.0)
                if should_stop is not None and should_stop():
                    server.should_exit = True
            await task
    finally:
        await pool.close()
        sock.close()


# --- a process of its own (cgm run) -----------------------------------------------------


def _process_main(
    db_url: str,
    settings: Settings,
    sock: socket.socket,
    heartbeat: Any,
    parent: int,
    log_level: int,
    ready: Any,
) -> None:
    """The API process: serves until SIGTERM/SIGINT, or until the service is gone."""
    # Ctrl-C at a terminal signals the whole process group, this process too: uvicorn shuts
    # down on it (it catches SIGINT while serving), and then re-raises it, which must not
    # end the process in a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def scheduler_running() -> bool:
        beat = heartbeat.value
        return beat > 0 and time.monotonic() - beat < SCHEDULER_STALE_S

    def started(_: uvicorn.Server) -> None:
        ready.send("started")

    coro = serve(
        db_url, settings, sock, scheduler_running,
        on_started=started, should_stop=lambda: os.getppid() != parent,
    )  # fmt: skip
    try:
        try:
            import uvloop  # a faster event loop where installed
        except ImportError:
            asyncio.run(coro)
        else:
            uvloop.run(coro)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            ready.send(f"{type(exc).__name__}: {exc}")
        raise


class ApiProcess:
    """The API in a child process (spawned: nothing of the service's state is inherited).
    ``/healthz`` learns whether the service's scheduler runs from a heartbeat in shared
    memory, which :meth:`beat` refreshes."""

    def __init__(self, db_url: str, settings: Settings, sock: socket.socket) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.heartbeat = ctx.Value("d", 0.0, lock=False)
        self._ready, child_end = ctx.Pipe(duplex=False)
        self.sock = sock
        self.process = ctx.Process(
            target=_process_main,
            args=(db_url, settings, sock, self.heartbeat, os.getpid(),
                  logging.getLogger().getEffectiveLevel(), child_end),
            name="cgm-api",
            daemon=True,
        )  # fmt: skip
        self._child_end = child_end

    def beat(self, scheduler_running: bool) -> None:
        self.heartbeat.value = time.monotonic() if scheduler_running else 0.0

    async def start(self) -> None:
        self.process.start()
        self._child_end.close()
        self.sock.close()  # the child holds it now
        got = await asyncio.to_thread(self._ready.poll, START_TIMEOUT_S)
        message = self._ready.recv() if got else None
        if message != "started":
            await self.stop()
            raise RuntimeError(f"the API process did not start: {message or 'timed out'}")

    async def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()  # SIGTERM: uvicorn finishes what it serves, then exits
            await asyncio.to_thread(self.process.join, STOP_TIMEOUT_S)
        if self.process.is_alive():
            log.warning("the API process did not stop in %.0f s: killed", STOP_TIMEOUT_S)
            self.process.kill()
            await asyncio.to_thread(self.process.join, STOP_TIMEOUT_S)


# --- a thread of the calling process (tests, benchmarks) --------------------------------


class ApiThread:
    """uvicorn, the pool and the application on a thread with its own event loop."""

    def __init__(self, db_url: str, settings: Settings, sock: socket.socket,
                 scheduler_running: Callable[[], bool] | None) -> None:  # fmt: skip
        self.db_url, self.settings, self.sock = db_url, settings, sock
        self.scheduler_running = scheduler_running
        self.started = threading.Event()
        self.error: BaseException | None = None
        self.server: _Server | None = None
        self.thread = threading.Thread(target=self._main, name="cgm-api", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(
                serve(
                    self.db_url, self.settings, self.sock, self.scheduler_running,
                    server_class=_Server, on_started=self._started,
                )
            )  # fmt: skip
        except BaseException as exc:  # reported to the starting loop, which raises it
            self.error = exc
        finally:
            self.started.set()

    def _started(self, server: uvicorn.Server) -> None:
        self.server = server  # type: ignore[assignment]
        self.started.set()

    async def start(self) -> None:
        self.thread.start()
        await asyncio.to_thread(self.started.wait)
        if self.error is not None:
            raise self.error

    async def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        await asyncio.to_thread(self.thread.join, STOP_TIMEOUT_S)
        if self.thread.is_alive():
            log.warning("the API server did not stop in %.0f s", STOP_TIMEOUT_S)


def install(service: Service) -> None:
    """Serve the API on ``api_host:api_port`` while the service runs (port 0: no API), in a
    process of its own (:class:`ApiProcess`)."""
    settings = service.settings
    if not settings.api_port:
        return
    state: dict[str, Any] = {}

    async def beat(svc: Service, api: ApiProcess) -> None:
        while True:
            api.beat(svc.scheduler.running)
            await asyncio.sleep(1.0)

    async def start(svc: Service) -> None:
        sock = _bind(settings.api_host, settings.api_port)
        api = ApiProcess(svc.db_url, settings, sock)
        state["api"] = api
        await api.start()
        state["beat"] = asyncio.create_task(beat(svc, api), name="cgm-api-heartbeat")
        log.info("API on http://%s:%d%s", settings.api_host, settings.api_port, "/api/v1/docs")

    async def stop(svc: Service) -> None:
        task = state.pop("beat", None)
        if task is not None:
            task.cancel()
        api = state.pop("api", None)
        if api is not None:
            await api.stop()

    service.on_start.append(start)
    service.on_stop.append(stop)
