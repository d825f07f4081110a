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


def current_url(settings: Settings) -> str:
    """The database URL, with its schema known to be current.

    The embedded database is ours, so it is upgraded on the spot. A configured server is
    never changed behind the operator's back: a schema that is behind is a clear error.
    """
    from cgm.migrate import pending, upgrade

    url = database_url(settings)
    if not settings.database_url:
        upgrade(url, settings)
        return url
    waiting = pending(url)
    if waiting:
        raise SchemaBehind(
            f"the database schema is behind (pending: {', '.join(waiting)}); run `cgm db upgrade`"
        )
    return url


class SchemaBehind(RuntimeError):
    """The database needs `cgm db upgrade` before this command can run."""


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
