"""Serve the API inside ``cgm run``: uvicorn on the service's own asyncio loop.

The socket is bound before uvicorn starts, so a taken port is a clear error at start-up
(uvicorn itself would call ``sys.exit``); signals stay with the service, which stops the
server through its on_stop hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn
from psycopg_pool import AsyncConnectionPool

from cgm.api.app import create_app
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
        raise RuntimeError(
            f"the API cannot listen on {host}:{port} ({exc.strerror or exc}); "
            "set CGM_API_PORT (0 disables the API)"
        ) from None


def make_pool(db_url: str) -> AsyncConnectionPool:
    """The API's own pool (autocommit: a failed login is counted though the request fails)."""
    return AsyncConnectionPool(
        db_url,
        min_size=1,
        max_size=4,
        open=False,
        kwargs={"autocommit": True},
        check=AsyncConnectionPool.check_connection,
    )


def install(service: Service) -> None:
    """Serve the API on ``api_host:api_port`` while the service runs (port 0: no API)."""
    settings = service.settings
    if not settings.api_port:
        return
    state: dict[str, object] = {}

    async def start(svc: Service) -> None:
        sock = _bind(settings.api_host, settings.api_port)
        pool = make_pool(svc.db_url)
        try:
            await pool.open(wait=True, timeout=30)
        except BaseException:
            sock.close()
            raise
        state["pool"] = pool
        app = create_app(
            svc.db_url, pool, settings=settings, scheduler_running=lambda: svc.scheduler.running
        )
        config = uvicorn.Config(
            app, log_config=None, lifespan="off", server_header=False, timeout_graceful_shutdown=5
        )
        server = _Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]), name="cgm-api")
        state["server"], state["task"] = server, task
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the API server stopped during start-up")
            await asyncio.sleep(0.02)
        log.info("API on http://%s:%d%s", settings.api_host, settings.api_port, "/api/v1/docs")

    async def stop(svc: Service) -> None:
        server, task = state.get("server"), state.get("task")
        if isinstance(server, _Server) and isinstance(task, asyncio.Task):
            server.should_exit = True
            try:
                await asyncio.wait_for(task, STOP_TIMEOUT_S)
            except TimeoutError:
                log.warning("the API server did not stop in %.0f s; cancelled", STOP_TIMEOUT_S)
        pool = state.get("pool")
        if isinstance(pool, AsyncConnectionPool):
            await pool.close()

    service.on_start.append(start)
    service.on_stop.append(stop)
