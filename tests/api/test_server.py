"""The API as ``cgm run`` serves it: uvicorn on its own thread and loop, over a real socket,
started and stopped by the service's hooks."""

from __future__ import annotations

import socket

import httpx
import pytest

from cgm.api import install
from cgm.config import Settings
from cgm.service import Service
from tests.api.conftest import make_user


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_served_over_a_socket_and_stopped_cleanly(db_url: str) -> None:
    port = _free_port()
    svc = Service(Settings(database_url=db_url, api_host="127.0.0.1", api_port=port))
    svc.db_url = db_url
    install(svc)
    auth = await make_user(db_url, 1)
    base = f"http://127.0.0.1:{port}"
    for hook in svc.on_start:
        await hook(svc)
    try:
        async with httpx.AsyncClient(base_url=base) as c:
            r = await c.get("/healthz")
            # The scheduler is not started in this test: unhealthy, and said so.
            assert r.status_code == 503 and r.json()["database"] is True
            assert r.json()["scheduler"] is False
            assert (await c.get("/api/v1/frontiers")).status_code == 401
            assert (await c.get("/api/v1/frontiers", auth=auth)).status_code == 200
            assert "server" not in r.headers
    finally:
        for hook in reversed(svc.on_stop):
            await hook(svc)
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=base) as c:
            await c.get("/healthz")


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
