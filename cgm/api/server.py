"""Serve the API inside ``cgm run``: uvicorn on a thread and event loop of its own.

The socket is bound before uvicorn starts, so a taken port is a clear error at start-up
(uvicorn itself would call ``sys.exit``); signals stay with the service, which stops the
server through its on_stop hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import uvicorn
from psycopg_pool import AsyncConnectionPool

from cgm.api.app import create_app
from cgm.config import PortTaken, Settings
from cgm.service import Service

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 10.0


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # SIGINT/SIGTERM belong to the service (Service.run), which stops us on_stop.
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    try:
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        raise PortTaken(
            f"the API cannot listen on {host}:{port} ({exc.strerror or exc}); "
            "set CGM_API_PORT (0 disables the API)"
        ) from None


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


class ApiThread:
    """uvicorn, the pool and the application on a thread with its own event loop.

    The service's loop drives hundreds of meter sessions and their writes; on that loop a
    request waits behind whatever callback runs at the time (measured: p99 of a one-row
    registry read went from tens of milliseconds to over a second during a cycle). On its
    own loop the API only competes for the interpreter, which Python hands over every few
    milliseconds, and the database and numpy work on both sides releases it anyway.
    """

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
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to the starting loop, which raises it
            self.error = exc
        finally:
            self.started.set()

    async def _serve(self) -> None:
        pool = make_pool(self.db_url)
        try:
            await pool.open(wait=True, timeout=30)
            app = create_app(
                self.db_url, pool, settings=self.settings,
                scheduler_running=self.scheduler_running,
            )  # fmt: skip
            config = uvicorn.Config(
                app,
                log_config=None,
                lifespan="off",
                server_header=False,
                timeout_graceful_shutdown=5,
            )
            self.server = _Server(config)
            task = asyncio.create_task(self.server.serve(sockets=[self.sock]))
            while not self.server.started:  # noqa: ASYNC110 - uvicorn offers no event
                if task.done():
                    task.result()
                    raise RuntimeError("the API server stopped during start-up")
                await asyncio.sleep(0.02)
            self.started.set()
            await task
        finally:
            await pool.close()
            self.sock.close()

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
    """Serve the API on ``api_host:api_port`` while the service runs (port 0: no API), on
    its own thread and event loop (:class:`ApiThread`)."""
    settings = service.settings
    if not settings.api_port:
        return
    state: dict[str, ApiThread] = {}

    async def start(svc: Service) -> None:
        sock = _bind(settings.api_host, settings.api_port)
        api = ApiThread(svc.db_url, settings, sock, lambda: svc.scheduler.running)
        state["api"] = api
        await api.start()
        log.info("API on http://%s:%d%s", settings.api_host, settings.api_port, "/api/v1/docs")

    async def stop(svc: Service) -> None:
        api = state.pop("api", None)
        if api is not None:
            await api.stop()

    service.on_start.append(start)
    service.on_stop.append(stop)
