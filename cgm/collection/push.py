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
import hashlib
import logging
import socket
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

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
from cgm.frontier_log import CONFIG_VIOLATION, alarm_once
from cgm.registry import MeterConfig, active_meters_async
from cgm.security import SecretBox
from drivers.base import AccessLevel, DriverError, ProfileEntry, utcnow

log = logging.getLogger(__name__)

_RETRY = (1.0, 60.0)  # reconnect backoff: first wait, cap (seconds)


def _prefix(target: MeterConfig) -> str:
    return str(target.params.get("topic_prefix") or "cgm")


def _serial(target: MeterConfig) -> str:
    return str(target.params.get("serial") or target.serial)


SESSION_EXPIRY_S = 3 * 86400  # how long the broker keeps queueing for a stopped collector
UNAUTHENTICATED = "unauthenticated pushed entries refused"  # purpose of the alarm


@dataclass
class Pushed:
    """One push of a known meter: its entries (``ack`` once stored), or why it was refused
    before its values could be read (signature, malformed)."""

    target: MeterConfig
    entries: list[ProfileEntry]
    at: datetime
    ack: Callable[[], None] | None = None
    refused: str | None = None


class PushConsumer:
    """Subscribes to every registered MQTT meter's pushes and stores them.

    The subscription is a persistent MQTT session under a client id that stays the same
    across restarts (``client_id``): QoS 1, no clean start, ``session_expiry`` seconds. While
    cgm is down the broker queues the meters' pushes; on restart they arrive and are stored.
    A push is acknowledged only after the transaction that stored it, so one received but not
    stored (a crash, a stop, the database away) is sent again, and storing it twice changes
    nothing (readings are upserted): each hour is stored once.
    """

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
        client_id: str | None = None,
        session_expiry: int = SESSION_EXPIRY_S,
    ) -> None:
        self.db_url = db_url
        self.box = box
        self.collector_id = collector_id
        self.client_id = client_id or f"cgm-push-{collector_id}"
        self.session_expiry = session_expiry
        self.config = config or EngineConfig()
        self.refresh = refresh
        self.batch_wait = batch_wait
        self.batch_size = batch_size
        self._targets: dict[tuple[str, str], MeterConfig] = {}  # (prefix, serial) -> meter
        self._subs: dict[tuple[Any, ...], asyncio.Task[None]] = {}
        self._queue: asyncio.Queue[Pushed] = asyncio.Queue(maxsize=100_000)
        self.stored = 0  # reading values stored from pushes
        self.refused = 0  # values and messages refused, each recorded with its reason
        self.received = 0  # authenticated pushes received (stored, or to be)
        self.skipped_sub_hourly = 0
        self.subscribed = asyncio.Event()  # set once a broker subscription is in place

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

    def _refusals_for(self, prefix: str) -> Callable[[str, str], None]:
        def refused(serial: str, reason: str) -> None:
            target = self._targets.get((prefix, serial))
            if target is None:
                return
            try:
                self._queue.put_nowait(Pushed(target, [], utcnow(), refused=reason))
            except asyncio.QueueFull:
                log.warning("push queue full: refusal of %s not recorded", serial)

        return refused

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
            # What was received but not stored is not acknowledged: the broker keeps it.
            tasks = [*self._subs.values(), writer]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._subs.clear()

    async def _sync(self) -> None:
        """Load the registry's MQTT meters; subscribe on each broker not yet subscribed."""
        async with await psycopg.AsyncConnection.connect(self.db_url) as conn:
            targets = [t for t in await active_meters_async(conn, self.box) if _pushes(t)]
        # Never log in anonymously in place of a broker account the key cannot open.
        targets = [t for t in targets if "broker" not in t.unreadable]
        self._targets = {(_prefix(t), _serial(t)): t for t in targets}
        for t in targets:
            login = mqtt_login(t)
            key = (t.endpoints[0].host, t.endpoints[0].port, login.key(), _prefix(t))
            if key not in self._subs or self._subs[key].done():
                self._subs[key] = asyncio.create_task(self._subscribe(t, login))

    def _client_id(self, first: MeterConfig, login: Any) -> str:
        """This collector's client id on one broker and login: stable across restarts."""
        ep = first.endpoints[0]
        tag = hashlib.sha256(f"{ep.host}:{ep.port}:{login.username}".encode()).hexdigest()
        return f"{self.client_id}-{tag[:8]}"

    async def _subscribe(self, first: MeterConfig, login: Any) -> None:
        from drivers.mqtt import subscribe_profiles

        ep, prefix = first.endpoints[0], _prefix(first)
        wait = _RETRY[0]
        while True:
            try:
                async with subscribe_profiles(
                    ep.host, ep.port, prefix=prefix, auth=self._auth_for(prefix), login=login,
                    client_id=self._client_id(first, login), session_expiry=self.session_expiry,
                    on_refused=self._refusals_for(prefix),
                ) as sub:  # fmt: skip
                    log.info("receiving pushed entries from %s (prefix %s)", ep, prefix)
                    self.subscribed.set()
                    wait = _RETRY[0]
                    async for d in sub.deliveries():
                        self.received += 1
                        target = self._targets.get((prefix, d.serial))
                        if target is None:
                            d.ack()
                        else:
                            await self._queue.put(Pushed(target, d.entries, utcnow(), d.ack))
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
                conn = await self._store_acked(conn, batch)
        finally:
            if conn is not None:
                await conn.close()

    async def _store_acked(
        self, conn: psycopg.AsyncConnection | None, batch: list[Pushed]
    ) -> psycopg.AsyncConnection | None:
        """Store ``batch`` and acknowledge it. The database away: keep it (unacknowledged,
        so a stop now leaves it with the broker) and try again. Anything else: store the
        pushes one by one, and drop (logged, acknowledged) only one that still fails, so one
        bad push never blocks the others."""
        wait = _RETRY[0]
        while True:
            try:
                if conn is None or conn.closed:
                    conn = await psycopg.AsyncConnection.connect(self.db_url)
                await self.store(conn, batch)
                break
            except (psycopg.OperationalError, OSError) as exc:
                log.warning(
                    "pushed entries not stored yet (%d messages): %s; retrying in %.0f s",
                    len(batch), exc, wait,
                )  # fmt: skip
                conn = None
                await asyncio.sleep(wait)
                wait = min(wait * 2, _RETRY[1])
            except Exception:  # noqa: BLE001 - the writer must outlive any one push
                if len(batch) == 1:
                    log.exception("pushed entries of %s not stored", batch[0].target.serial)
                    break
                for item in batch:
                    conn = await self._store_acked(conn, [item])
                return conn
        for item in batch:
            if item.ack is not None:
                item.ack()
        return conn

    async def store(self, conn: psycopg.AsyncConnection, batch: Sequence[Pushed]) -> Stored:
        """Screen and store one batch of pushes in one transaction; what is refused is
        recorded for its meter (session log, ``reading_refused``, hoja de vida)."""
        outcomes: dict[int, MeterOutcome] = {}
        refused: dict[int, Counter[str]] = {}
        for item in batch:
            target = item.target
            if item.refused is not None:
                refused.setdefault(target.meter_id, Counter())[item.refused] += 1
                continue
            hourly = [e for e in item.entries if e.period == HOUR]
            self.skipped_sub_hourly += len(item.entries) - len(hourly)
            if not hourly:
                continue
            o = outcomes.get(target.meter_id)
            if o is None:
                o = outcomes[target.meter_id] = MeterOutcome(
                    target=target, started_at=item.at, channel_used="primary"
                )
            o.entries.extend(hourly)
            o.finished_at = item.at
        stored = Stored()
        if not outcomes and not refused:
            return stored
        pushed = list(outcomes.values())
        targets = {i.target.meter_id: i.target for i in batch}
        async with conn.transaction():
            if pushed:
                rows, stored, sub_hourly = await _reading_rows(conn, pushed)
                rows = _screen(rows, pushed, stored)
                await _write_isolated(
                    conn, rows, self.collector_id, self.config, stored,
                    source=f"mqtt-push:{self.collector_id}",
                )  # fmt: skip
                await _meter_entries(conn, sub_hourly)
                await _refused_rows(conn, stored, current_cycle())
            fresh = [o.target.meter_id for o in pushed if stored.values.get(o.target.meter_id)]
            if fresh:
                # What the overdue count and the dashboards read: the meter is current.
                await conn.execute(
                    """UPDATE meter_health SET last_success = greatest(last_success, now())
                       WHERE meter_id = ANY(%s)""",
                    (fresh,),
                )
            await self._record_refusals(conn, targets, outcomes, stored, refused)
        n = sum(stored.values.values())
        self.stored += n
        for o in pushed:
            got = stored.values.get(o.target.meter_id, 0)
            if got:
                metrics.INTERVALS_STORED.labels("mqtt").inc(got)
                metrics.LAST_SUCCESS.labels(o.target.serial, o.target.frontier_code).set(
                    o.started_at.timestamp()
                )
        for r in stored.refused:
            metrics.INTERVALS_REFUSED.labels(r.kind).inc()
            log.warning("pushed value of meter %d refused: %s", r.meter_id, r.reason)
        return stored

    async def _record_refusals(
        self,
        conn: psycopg.AsyncConnection,
        targets: dict[int, MeterConfig],
        outcomes: dict[int, MeterOutcome],
        stored: Stored,
        refused: dict[int, Counter[str]],
    ) -> None:
        """Refused pushes as refused reads are recorded: a session row per meter with the
        counts by reason, the value refusals' findings in the hoja de vida when they are new,
        and an alarm (once a day) for pushes that could not be authenticated."""
        by_meter = {m: stored.refusals(m) for m in outcomes}
        for meter_id, reasons in refused.items():
            by_meter.setdefault(meter_id, Counter()).update(reasons)
        by_meter = {m: c for m, c in by_meter.items() if c}
        if not by_meter:
            return
        rows = []
        for meter_id, reasons in by_meter.items():
            o = outcomes.get(meter_id)
            reason, n = reasons.most_common(1)[0]
            at = o.finished_at if o is not None and o.finished_at else utcnow()
            rows.append((
                meter_id, current_cycle(), f"mqtt-push:{self.collector_id}", at, at,
                "push_refused", f"{sum(reasons.values())} refused ({n}: {reason})",
                len(o.entries) if o is not None else 0, stored.values.get(meter_id, 0),
                sum(reasons.values()), Jsonb(dict(reasons)),
            ))  # fmt: skip
            self.refused += sum(reasons.values())
        async with conn.cursor() as cur:
            await cur.executemany(
                """INSERT INTO collection_session
                     (meter_id, cycle, collector, started_at, finished_at, result, error,
                      attempts, entries_read, intervals_stored, intervals_refused, refusals,
                      channel_used)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, 0, %s, %s, %s, %s, 'push')""",
                rows,
            )
        await _push_findings(conn, targets, stored, self.config.actor)
        alarms = [
            (targets[m].frontier_id, m, self.config.actor, UNAUTHENTICATED,
             {"refused": sum(c.values()), "reasons": dict(c)})
            for m, c in refused.items()
            if any(r.startswith("unauthenticated") for r in c)
        ]  # fmt: skip
        if alarms:
            await alarm_once(conn, alarms)


async def _push_findings(
    conn: psycopg.AsyncConnection, targets: dict[int, MeterConfig], stored: Stored, actor: str
) -> None:
    """Findings of refused pushed values, added to the meter's current ones: a hoja de vida
    entry when one is new (the next full session's check replaces the set)."""
    found: dict[int, set[str]] = {}
    for r in stored.refused:
        found.setdefault(r.meter_id, set()).add(r.finding)
    if not found:
        return
    cur = await conn.execute(
        "SELECT meter_id, config_findings FROM meter_health WHERE meter_id = ANY(%s)",
        (list(found),),
    )
    known = {m: set(f) for m, f in await cur.fetchall()}
    for meter_id, findings in found.items():
        new = findings - known.get(meter_id, set())
        if not new:
            continue
        await conn.execute(
            """INSERT INTO meter_health (meter_id, config_findings) VALUES (%s, %s)
               ON CONFLICT (meter_id) DO UPDATE SET config_findings = EXCLUDED.config_findings""",
            (meter_id, sorted(known.get(meter_id, set()) | new)),
        )
        metrics.CONFIG_VIOLATIONS.inc(len(new))
        await conn.execute(
            """INSERT INTO frontier_log (frontier_id, meter_id, actor, kind, purpose, activities)
               VALUES (%s, %s, %s, %s, 'pushed entries check', %s)""",
            (targets[meter_id].frontier_id, meter_id, actor, CONFIG_VIOLATION,
             Jsonb({"findings": sorted(new), "source": "mqtt push"})),
        )  # fmt: skip


def stable_client_id(settings: Any) -> str:
    """The MQTT client id of this installation's push subscription: the configured one, or
    one derived from the host name and the data directory (two installations on one host
    must not take over each other's session)."""
    if settings.mqtt_client_id:
        return str(settings.mqtt_client_id)
    place = f"{socket.gethostname()}:{Path(settings.data_dir).resolve()}"
    return f"cgm-{hashlib.sha256(place.encode()).hexdigest()[:12]}"


def install(service: Any, job: Any) -> None:
    """Consume pushes in ``cgm run`` next to the collection ``job`` (same collector id)."""
    from cgm.security import secret_box

    state: dict[str, Any] = {}

    async def start(svc: Any) -> None:
        collector_id = job.collector.id if job.collector is not None else "cgm"
        consumer = PushConsumer(
            svc.db_url, secret_box(svc.settings), collector_id=collector_id, config=job.config,
            client_id=stable_client_id(svc.settings),
            session_expiry=svc.settings.mqtt_session_expiry_s,
        )  # fmt: skip
        state["task"] = asyncio.create_task(consumer.run(svc.stop_event))
        svc.push_consumer = consumer

    async def stop(svc: Any) -> None:
        task = state.get("task")
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    service.on_start.append(start)
    service.on_stop.insert(0, stop)
