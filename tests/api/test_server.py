"""The API as ``cgm run`` serves it: uvicorn in a process of its own, over a real socket,
started and stopped by the service's hooks."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import psutil
import pytest

from cgm.api import install
from cgm.config import Settings
from cgm.service import Service
from tests.api.conftest import make_user


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@asynccontextmanager
async def _service(db_url: str) -> AsyncIterator[tuple[Service, int]]:
    """A service with the API installed on a free port, its start hooks run (so the API
    process is up), its stop hooks run on the way out: (the service, the port)."""
    port = _free_port()
    svc = Service(Settings(database_url=db_url, api_host="127.0.0.1", api_port=port))
    svc.db_url = db_url
    install(svc)
    for hook in svc.on_start:
        await hook(svc)
    try:
        yield svc, port
    finally:
        for hook in reversed(svc.on_stop):
            await hook(svc)


async def test_served_over_a_socket_and_stopped_cleanly(db_url: str) -> None:
    auth = await make_user(db_url, 1)
    async with _service(db_url) as (_, port):
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base) as c:
            r = await c.get("/healthz")
            # The scheduler is not started in this test: unhealthy, and said so.
            assert r.status_code == 503 and r.json()["database"] is True
            assert r.json()["scheduler"] is False
            assert (await c.get("/api/v1/frontiers")).status_code == 401
            assert (await c.get("/api/v1/frontiers", auth=auth)).status_code == 200
            assert "server" not in r.headers
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=base) as c:
            await c.get("/healthz")


async def test_api_process_reports_the_services_scheduler(db_url: str) -> None:
    async with _service(db_url) as (svc, port):
        svc.scheduler.start()
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
                deadline = asyncio.get_running_loop().time() + 20
                while (r := await c.get("/healthz")).status_code != 200:
                    assert asyncio.get_running_loop().time() < deadline, r.text
                    await asyncio.sleep(0.2)
                assert r.json() == {"status": "ok", "database": True, "scheduler": True}
            # It listens in a child process; the service's own process holds no copy of
            # the socket (so stopping the child closes the port).
            me = psutil.Process()
            assert _listener(me.children(), port) and not _listener([me], port)
        finally:
            svc.scheduler.shutdown(wait=False)


def _listener(processes: list[psutil.Process], port: int) -> list[psutil.Process]:
    """Those of ``processes`` that listen on ``port``."""
    return [
        p
        for p in processes
        if any(
            c.laddr.port == port and c.status == psutil.CONN_LISTEN
            for c in p.net_connections(kind="tcp")
        )
    ]


async def test_taken_port_is_a_clear_error(db_url: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        svc = Service(Settings(database_url=db_url, api_host="127.0.0.1", api_port=port))
        svc.db_url = db_url
        install(svc)
        with pytest.raises(RuntimeError, match=f"cannot listen on 127.0.0.1:{port}"):
            await svc.on_start[0](svc)
        for hook in svc.on_stop:
            await hook(svc)


def test_port_zero_disables_the_api(db_url: str) -> None:
    svc = Service(Settings(database_url=db_url, api_port=0))
    install(svc)
    assert svc.on_start == [] and svc.on_stop == []


def test_accepted_connections_have_tcp_nodelay() -> None:
    """A response is written as headers, then body: without TCP_NODELAY on the accepted
    connection the body waits for the client's delayed ACK (about 40 ms on Linux). asyncio
    sets it only on sockets made with proto IPPROTO_TCP, which the API's listening socket is
    not, so the listening socket carries it and connections inherit it."""
    from cgm.api.server import _bind

    listening = _bind("127.0.0.1", 0)
    try:
        client = socket.create_connection(listening.getsockname()[:2])
        accepted, _ = listening.accept()
        with client, accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        listening.close()


async def test_ctrl_c_stops_the_api_process_without_a_traceback(db_url: str, capfd) -> None:
    """Ctrl-C at the terminal of ``cgm run`` signals the API process too (one process
    group): it stops serving and ends cleanly, not in a KeyboardInterrupt traceback."""
    async with _service(db_url) as (_, port):
        (api,) = _listener(psutil.Process().children(), port)
        os.kill(api.pid, signal.SIGINT)
        code = await asyncio.to_thread(api.wait, 30)
    err = capfd.readouterr().err
    assert code == 0 and "Traceback" not in err and "KeyboardInterrupt" not in err, err[-2000:]
