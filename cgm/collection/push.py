"""MQTT meters' pushed hourly entries, stored as they arrive.

A cgm-meter/1 meter publishes each hour's entry a few seconds after the hour closes. The
consumer subscribes on the collector's shared broker connection(s), authenticates each push
(the meter's level-1 signature, or the broker ACL where the registry says so), and stores the
entries through the same screening as a cycle (row checks, plausibility guard, entries kept
for audit), with the source ``mqtt-push:{collector}``. Only hourly entries are stored from a
push: a sub-hourly meter's hour is complete only in its profile, which the cycle reads.

So in the steady state an MQTT meter that pushes needs no request: the hourly cycle skips it
while its previous hour arrived by push after its last full session (clock check, registers,
gaps) and that session is younger than ``params.full_session_hours`` (default 24). A missed
push is read back by the next full session, from where the store stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg

from cgm import metrics
from cgm.collection.engine import (
    HOUR,
    EngineConfig,
    Stored,
    _meter_entries,
    _reading_rows,
    _refused_rows,
    _screen,
    _write_isolated,
    current_cycle,
)
from cgm.collection.session import MeterOutcome, mqtt_login
from cgm.collection.steady import pushes as _pushes
from cgm.registry import MeterConfig, active_meters_async
from cgm.security import SecretBox
from drivers.base import AccessLevel, DriverError, ProfileEntry, utcnow

log = logging.getLogger(__name__)

_RETRY = (1.0, 60.0)  # reconnect backoff: first wait, cap (seconds)


def _prefix(target: MeterConfig) -> str:
    return str(target.params.get("topic_prefix") or "cgm")


def _serial(target: MeterConfig) -> str:
    return str(target.params.get("serial") or target.serial)


class PushConsumer:
    """Subscribes to every registered MQTT meter's pushes and stores them."""

    def __init__(
        self,
        db_url: str,
        box: SecretBox,
        *,
        collector_id: str,
        config: EngineConfig | None = None,
        refresh: float = 300.0,
        batch_wait: float = 1.0,
        batch_size: int = 500,
    ) -> None:
        self.db_url = db_url
        self.box = box
        self.collector_id = collector_id
        self.config = config or EngineConfig()
        self.refresh = refresh
        self.batch_wait = batch_wait
        self.batch_size = batch_size
        self._targets: dict[tuple[str, str], MeterConfig] = {}  # (prefix, serial) -> meter
        self._subs: dict[tuple[Any, ...], asyncio.Task[None]] = {}
        self._queue: asyncio.Queue[tuple[MeterConfig, list[ProfileEntry], datetime]] = (
            asyncio.Queue(maxsize=100_000)
        )
        self.stored = 0  # reading values stored from pushes
        self.skipped_sub_hourly = 0

    # -- authentication: what subscribe_profiles asks per serial --

    def _auth_for(self, prefix: str) -> Any:
        def auth(serial: str) -> str | None:
            target = self._targets.get((prefix, serial))
            if target is None:
                return None
            if target.params.get("answer_auth") == "broker_acl":
                from drivers.mqtt import AUTH_BROKER_ACL

                return AUTH_BROKER_ACL
            cred = target.credential(AccessLevel.READ)
            return cred.secret if cred is not None else None

        return auth

    # -- lifecycle --

    async def run(self, stop: asyncio.Event) -> None:
        writer = asyncio.create_task(self._writer())
        try:
            while not stop.is_set():
                try:
                    await self._sync()
                except (psycopg.Error, OSError) as exc:
                    log.warning("push consumer: registry not readable: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.refresh)
        finally:
            tasks = [*self._subs.values(), writer]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._subs.clear()

    async def _sync(self) -> None:
        """Load the registry's MQTT meters; subscribe on each broker not yet subscribed."""
        async with await psycopg.AsyncConnection.connect(self.db_url) as conn:
            targets = [t for t in await active_meters_async(conn, self.box) if _pushes(t)]
        self._targets = {(_prefix(t), _serial(t)): t for t in targets}
        for t in targets:
            login = mqtt_login(t)
            key = (t.endpoints[0].host, t.endpoints[0].port, login.key(), _prefix(t))
            if key not in self._subs or self._subs[key].done():
                self._subs[key] = asyncio.create_task(self._subscribe(t, login))

    async def _subscribe(self, first: MeterConfig, login: Any) -> None:
        from drivers.mqtt import subscribe_profiles

        ep, prefix = first.endpoints[0], _prefix(first)
        wait = _RETRY[0]
        while True:
            try:
                async with subscribe_profiles(
                    ep.host, ep.port, prefix=prefix, auth=self._auth_for(prefix), login=login
                ) as sub:
                    log.info("receiving pushed entries from %s (prefix %s)", ep, prefix)
                    wait = _RETRY[0]
                    async for serial, entries in sub.batches():
                        target = self._targets.get((prefix, serial))
                        if target is not None:
                            await self._queue.put((target, entries, utcnow()))
            except DriverError as exc:
                log.warning("pushed entries from %s: %s; retrying in %.0f s", ep, exc, wait)
            await asyncio.sleep(wait)
            wait = min(wait * 2, _RETRY[1])

    async def _writer(self) -> None:
        conn: psycopg.AsyncConnection | None = None
        try:
            while True:
                batch = [await self._queue.get()]
                deadline = asyncio.get_running_loop().time() + self.batch_wait
                while len(batch) < self.batch_size:
                    left = deadline - asyncio.get_running_loop().time()
                    if left <= 0:
                        break
                    try:
                        batch.append(await asyncio.wait_for(self._queue.get(), left))
                    except TimeoutError:
                        break
                try:
                    if conn is None or conn.closed:
                        conn = await psycopg.AsyncConnection.connect(self.db_url)
                    await self.store(conn, batch)
                except (psycopg.OperationalError, OSError) as exc:
                    # The database is away: these entries come back through the next full
                    # session's read_profile, from where the store stops.
                    log.warning("pushed entries not stored (%d messages): %s", len(batch), exc)
                    conn = None
        finally:
            if conn is not None:
                await conn.close()

    async def store(
        self,
        conn: psycopg.AsyncConnection,
        batch: Sequence[tuple[MeterConfig, list[ProfileEntry], datetime]],
    ) -> Stored:
        """Screen and store one batch of pushed entries in one transaction."""
        outcomes = []
        for target, entries, at in batch:
            hourly = [e for e in entries if e.period == HOUR]
            self.skipped_sub_hourly += len(entries) - len(hourly)
            if hourly:
                outcomes.append(
                    MeterOutcome(
                        target=target,
                        started_at=at,
                        finished_at=at,
                        channel_used="primary",
                        entries=hourly,
                    )
                )
        stored = Stored()
        if not outcomes:
            return stored
        async with conn.transaction():
            rows, stored, sub_hourly = await _reading_rows(conn, outcomes)
            rows = _screen(rows, outcomes, stored)
            await _write_isolated(
                conn, rows, self.collector_id, self.config, stored,
                source=f"mqtt-push:{self.collector_id}",
            )  # fmt: skip
            await _meter_entries(conn, sub_hourly)
            await _refused_rows(conn, stored, current_cycle())
            fresh = [o.target.meter_id for o in outcomes if stored.values.get(o.target.meter_id)]
            if fresh:
                # What the overdue count and the dashboards read: the meter is current.
                await conn.execute(
                    """UPDATE meter_health SET last_success = greatest(last_success, now())
                       WHERE meter_id = ANY(%s)""",
                    (fresh,),
                )
        n = sum(stored.values.values())
        self.stored += n
        for o in outcomes:
            got = stored.values.get(o.target.meter_id, 0)
            if got:
                metrics.INTERVALS_STORED.labels("mqtt").inc(got)
                metrics.LAST_SUCCESS.labels(o.target.serial, o.target.frontier_code).set(
                    o.started_at.timestamp()
                )
        for r in stored.refused:
            log.warning("pushed value of meter %d refused: %s", r.meter_id, r.reason)
        return stored


def install(service: Any, job: Any) -> None:
    """Consume pushes in ``cgm run`` next to the collection ``job`` (same collector id)."""
    from cgm.security import secret_box

    state: dict[str, Any] = {}

    async def start(svc: Any) -> None:
        collector_id = job.collector.id if job.collector is not None else "cgm"
        consumer = PushConsumer(svc.db_url, secret_box(svc.settings), collector_id=collector_id,
                                config=job.config)  # fmt: skip
        state["task"] = asyncio.create_task(consumer.run(svc.stop_event))
        svc.push_consumer = consumer

    async def stop(svc: Any) -> None:
        task = state.get("task")
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    service.on_start.append(start)
    service.on_stop.insert(0, stop)

