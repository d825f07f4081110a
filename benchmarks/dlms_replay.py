"""DLMS CPU per session in process, without sockets: the driver's side and the simulator's.

    .venv/bin/python benchmarks/dlms_replay.py [--sessions 3000] [--meters 250]
        [--profile-driver /tmp/d.prof] [--profile-sim /tmp/s.prof]

Why: with sockets, a session's CPU includes asyncio and the kernel for its seven round trips
(``benchmarks/protocol_cpu.py``), which hides what the protocol code itself costs.

* Driver: one steady-state session (associate, identify, clock, profile configuration, the
  last hour of profile, registers, release) is run against a real simulator and its answers
  are recorded per request; then ``--sessions`` sessions replay them to the driver, the
  transport's socket replaced by the recording.
* Simulator: the requests of one such session are recorded and answered in process
  (``DlmsServer._answer``) for ``--meters`` meters: a meter's first session, a warm repeat,
  and a new hour (the meters' clocks moved one to three hours on).

Printed: CPU (``time.process_time``) per session for each.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers import get_driver  # noqa: E402
from drivers.base import AccessLevel, Credentials, Endpoint  # noqa: E402
from drivers.dlms import transport  # noqa: E402
from simulators.dlms import server as dlms_server  # noqa: E402
from simulators.fleet import build_fleet, start_fleet  # noqa: E402

Wrapper = transport.WrapperTransport


async def _session(place: Any, meter: Any, hour: datetime) -> None:
    session = await get_driver("dlms").connect(
        Endpoint(place.host, place.port),
        Credentials(AccessLevel.READ, meter.secrets.level1),
        dict(place.params),
        timeout=30,
    )
    async with session:
        await session.identify()
        await session.read_clock()
        await session.read_profile_config()
        assert await session.read_profile(hour - timedelta(hours=1), hour)
        await session.read_registers()


def _timed(label: str, n: int, profile: str | None, run: Callable[[], None]) -> None:
    prof = cProfile.Profile(time.process_time) if profile else None
    t0 = time.process_time()
    if prof:
        prof.enable()
    run()
    if prof:
        prof.disable()
        prof.dump_stats(profile)
    print(f"{label}: {(time.process_time() - t0) / n * 1e3:.3f} ms/session")


async def _driver(sessions: int, profile: str | None) -> None:
    fleet = build_fleet(20, seed=1, mix={"dlms": 1.0})
    await start_fleet(fleet, per_port=100)
    _, meter = next(iter(fleet.meters()))
    place = fleet.placements[meter.serial]
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    answers: dict[bytes, Any] = {}
    real = Wrapper.request

    async def record(self: Any, apdu: bytes) -> Any:
        answers[bytes(apdu)] = answer = await real(self, apdu)
        return answer

    Wrapper.request = record  # type: ignore[method-assign]
    await _session(place, meter, hour)
    await _session(place, meter, hour)

    async def replay(self: Any, apdu: bytes) -> Any:
        await asyncio.sleep(0)
        return answers[bytes(apdu)]

    async def opened(self: Any, host: str, port: int) -> None:
        self._link = True

    async def closed(self: Any) -> None:
        self._link = None

    Wrapper.request = replay  # type: ignore[method-assign]
    Wrapper.open = opened  # type: ignore[method-assign]
    Wrapper.close = closed  # type: ignore[method-assign]
    Wrapper.is_open = property(lambda self: self._link is not None)  # type: ignore[method-assign]
    for _ in range(200):  # warm caches, as a collector's steady state has them
        await _session(place, meter, hour)

    async def loop_run() -> None:
        for _ in range(sessions):
            await _session(place, meter, hour)

    prof = cProfile.Profile(time.process_time) if profile else None
    t0 = time.process_time()
    if prof:
        prof.enable()
    await loop_run()
    if prof:
        prof.disable()
        prof.dump_stats(profile)
    print(f"driver in process: {(time.process_time() - t0) / sessions * 1e3:.3f} ms/session")


async def _simulator(n_meters: int, profile: str | None) -> None:
    fleet = build_fleet(n_meters, seed=1, mix={"dlms": 1.0})
    await start_fleet(fleet, per_port=100)
    pairs = [(fleet.placements[m.serial], m) for _, m in fleet.meters()]
    place, first = pairs[0]
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    await _session(place, first, hour)
    requests: list[bytes] = []
    real = Wrapper.request

    async def record(self: Any, apdu: bytes) -> Any:
        requests.append(bytes(apdu))
        return await real(self, apdu)

    Wrapper.request = record  # type: ignore[method-assign]
    await _session(place, first, hour)
    Wrapper.request = real  # type: ignore[method-assign]
    owner = {
        id(m): server
        for server in (o for o in gc.get_objects() if isinstance(o, dlms_server.DlmsServer))
        for m in server.meters.values()
    }
    meters = [m for _, m in pairs]
    for m in meters:
        m.secrets = first.secrets  # one recorded LLS password answers for every meter

    def answer_all(hours_on: int) -> None:
        for m in meters:
            if hours_on:
                base = m.__dict__.setdefault("_base_now", m._now)
                m._now = lambda b=base, h=hours_on: b() + timedelta(hours=h)
            server, association = owner[id(m)], dlms_server._Association()
            for request in requests:
                out = server._answer(association, m, 0x20, request)
                assert out[:1] != b"\xd8", out  # an exception answer: the replay is wrong

    _timed("simulator, first session", len(meters), None, lambda: answer_all(0))
    _timed("simulator, warm", len(meters), None, lambda: answer_all(0))
    for h in (1, 2, 3):
        _timed(f"simulator, new hour {h}", len(meters), profile, lambda h=h: answer_all(h))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=3000)
    ap.add_argument("--meters", type=int, default=250)
    ap.add_argument("--profile-driver")
    ap.add_argument("--profile-sim")
    args = ap.parse_args()
    asyncio.run(_simulator(args.meters, args.profile_sim))  # first: _driver patches the transport
    asyncio.run(_driver(args.sessions, args.profile_driver))


if __name__ == "__main__":
    main()
