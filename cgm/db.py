"""Connections to the readings database.

One place decides which server cgm talks to: ``CGM_DATABASE_URL`` when set, otherwise the
embedded PostgreSQL under the data directory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from psycopg_pool import AsyncConnectionPool

from cgm.config import Settings

_embedded_url: str | None = None


def database_url(settings: Settings) -> str:
    """The configured URL, or that of the embedded server (started on first use)."""
    global _embedded_url
    if settings.database_url:
        return settings.database_url
    if _embedded_url is None:
        from cgm.embedded import postgres

        _embedded_url = postgres.start(settings.data_dir)
    return _embedded_url


async def connect(url: str, **kwargs: object) -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(url, **kwargs)


@asynccontextmanager
async def pool(url: str, size: int = 8) -> AsyncIterator[AsyncConnectionPool]:
    """A connection pool that checks connections, so a database restart heals by itself."""
    p = AsyncConnectionPool(
        url, min_size=1, max_size=size, open=False, check=AsyncConnectionPool.check_connection
    )
    await p.open(wait=True, timeout=30)
    try:
        yield p
    finally:
        await p.close()
