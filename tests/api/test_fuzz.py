"""Property-based fuzzing of the API from its own OpenAPI document (schemathesis): whatever
a client sends, valid or not, the answer is never a 500.

The application is served over a real socket by uvicorn in a thread with its own event
loop and connection pool, as ``cgm run`` serves it; the ``schemathesis`` command generates
requests for every operation (valid and invalid parameters and bodies) as a level-2 user, so
the write endpoints are exercised too. The example count is bounded so the suite stays fast.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from psycopg_pool import AsyncConnectionPool

from cgm.api import create_app
from cgm.api.server import _Server
from cgm.config import Settings
from tests.api.conftest import make_frontier, make_user

MAX_EXAMPLES = 30  # per operation


class _ServedApi:
    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.base = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.ready = threading.Event()
        self.server: _Server | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self) -> None:
        async with AsyncConnectionPool(
            self.db_url, min_size=1, max_size=4, kwargs={"autocommit": True}
        ) as pool:
            app = create_app(
                self.db_url,
                pool,
                settings=Settings(database_url=self.db_url),
                scheduler_running=lambda: True,
            )
            self.server = _Server(uvicorn.Config(app, log_config=None, lifespan="off"))
            task = asyncio.create_task(self.server.serve(sockets=[self.sock]))
            while not self.server.started:  # noqa: ASYNC110 - uvicorn offers no event
                await asyncio.sleep(0.02)
            self.ready.set()
            await task


@pytest.fixture(scope="module")
def served(db_url: str) -> Iterator[tuple[str, tuple[str, str], str]]:
    api = _ServedApi(db_url)
    api.thread.start()
    assert api.ready.wait(30), "the API did not start"
    name, pw = asyncio.run(make_user(db_url, 2))
    fr = asyncio.run(make_frontier(db_url))
    yield api.base, (name, pw), fr.code
    assert api.server is not None
    api.server.should_exit = True
    api.thread.join(15)


def test_fuzzed_requests_never_get_a_500(
    served: tuple[str, tuple[str, str], str], tmp_path: Path
) -> None:
    base, (name, password), code = served
    # A frontier that exists, so the operations are also fuzzed past the 404 of a random code.
    (tmp_path / "schemathesis.toml").write_text(f'[parameters]\n"path.code" = "{code}"\n')
    # The command line runs every phase (the document's examples, boundary "coverage"
    # values such as the last representable date, then random fuzzing), which the pytest
    # integration alone does not.
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "run",
            f"{base}/api/v1/openapi.json",
            "--checks", "not_a_server_error",
            "--phases", "examples,coverage,fuzzing",
            "--max-examples", str(MAX_EXAMPLES),
            "--seed", "1",
            "--auth", f"{name}:{password}",
            "--suppress-health-check", "all",
            # A 500 is what this test looks for; a slow answer on a loaded host (the PDF
            # is rendered on the loop, ~10 s at load 20 on two cores) is not one.
            "--request-timeout", "60",
            "--no-color",
        ],
        capture_output=True, text=True, timeout=1800, cwd=tmp_path,  # ~5 min unloaded
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout, done.stdout[-2000:]
