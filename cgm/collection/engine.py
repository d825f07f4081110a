"""A collection cycle: claim meters, interrogate them concurrently, store what they said.

Sessions run under a global bound and a per-endpoint bound (several meters behind one
gateway port must not be hammered at once; MQTT meters share a broker, not a link, so they
are bounded per meter). Outcomes flow through a queue to a single writer that stores them in
batches — readings, register snapshots, the session log, meter health, the hoja de vida and
claim completion in one transaction per batch — because a transaction per meter would cost
more than the sessions themselves at fleet scale.

What a cycle stores is what the meters said: raw values in secondary units, flagged, never a
zero for a failure (a failure is a row in ``collection_session``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from cgm import metrics
from cgm.collection import claims
from cgm.collection.columns import CHANNEL_IDS, ProfileColumns, epoch_us
from cgm.collection.derive import Snapshot, derive_intervals
from cgm.collection.gcpace import cycle_pace
from cgm.collection.hourly import to_hourly
from cgm.collection.link import CONNECT_OPTIONS, Link, retrying
from cgm.collection.plausibility import HourlyLimit, hourly_limit
from cgm.collection.session import MeterOutcome, SessionPolicy, interrogate
from cgm.collection.steady import pushed_recently
from cgm.collection.timeref import ReferenceConfig, check_reference_async
from cgm.config import Settings
from cgm.frontier_log import (
    ALARM,
    CLOCK_SYNC,
    CONFIG_VIOLATION,
    LEVEL2_ACCESS,
    UNREADABLE_CREDENTIAL,
    alarm_once,
    clock_corrections,
)
from cgm.registry import MeterConfig, active_meters_async
from cgm.security import SecretBox
from cgm.security.counters import PgInvocationCounterStore
from cgm.storage import InvalidRows, Quality, last_interval, readings_array, write_readings
from cgm.storage.common import channel_id, from_us
from cgm.storage.readings import READING_DTYPE, row_problems
from drivers import get_driver
from drivers.base import Driver, ProfileEntry

log = logging.getLogger(__name__)

HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class EngineConfig:
    max_sessions: int = 256
    per_endpoint: int = 4
    policy: SessionPolicy = field(default_factory=SessionPolicy)
    stale_after: timedelta = timedelta(seconds=90)
    claim_batch: int = 512
    claim_window: int = 4096  # ids offered per claim statement
    write_batch: int = 256
    # The writer gathers outcomes this long (seconds) before a transaction, and stops a
    # batch at this many profile entries (a first contact brings a month per meter), so
    # a batch's memory is bounded whatever the sessions bring.
    write_linger: float = 0.2
    write_entries: int = 50_000
    actor: str = "collector"  # names the collector in alarms and findings it records
    # The service user accountable for automatic level-2 accesses (art. 17: every level-2
    # access names who is responsible). None: no automatic level-2 access at all — a clock
    # past its target raises an alarm instead of being set.
    accountable: str | None = None
    # A clock is corrected once |offset| passes this fraction of its limit, and a correction
    # counts only when the re-read offset is inside it (art. 16: never reach the limit).
    clock_target_fraction: float = 1 / 3
    # The CGM's own clock against official time before any meter is set (None: not checked,
    # for tools and tests that set no clocks against the real world).
    reference: ReferenceConfig | None = None
    # A meter in failure backoff is still attempted (a clock check) this often.
    clock_check_every: timedelta = timedelta(days=1)
    # Backoff across cycles for a meter that keeps failing: after ``backoff_after`` failures
    # in a row, wait 2^(n - backoff_after) hours (capped) before the next attempt.
    backoff_after: int = 3
    max_backoff: timedelta = timedelta(hours=24)
    # Refused authentications a meter may see per access level in 24 h (lockout counters).
    max_wrong_passwords: int = 3
    # How long a cycle waits out a database outage (reconnecting) before it gives up on
    # what it could not store; the meters keep those intervals for the next cycle.
    db_outage: timedelta = timedelta(minutes=10)
    # Whole-session bound, over the per-call timeouts of the policy.
    session_deadline: timedelta = timedelta(minutes=10)


@dataclass
class CycleSummary:
    cycle: datetime
    meters: int = 0
    ok: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    skipped_backoff: int = 0
    skipped_auth: int = 0  # level-1 secret refused too often in 24 h: not presented again
    auth_refused: int = 0
    skipped_pushed: int = 0  # MQTT meters kept current by their pushes (no session needed)
    intervals_stored: int = 0  # reading values (meter, channel, hour) inserted or superseded
    intervals_refused: int = 0  # values set aside before storage, with a reason
    clocks_corrected: int = 0
    clock_corrections_failed: int = 0
    clock_reference: str | None = None  # why clocks may not be set this cycle (None: they may)
    config_findings: int = 0
    unstored: int = 0  # outcomes that could not be stored (their claims are released)
    claims_released: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "cycle": self.cycle.isoformat(),
            "meters": self.meters,
            "ok": self.ok,
            "failed": dict(self.failed),
            "skipped_backoff": self.skipped_backoff,
            "skipped_auth": self.skipped_auth,
            "auth_refused": self.auth_refused,
            "skipped_pushed": self.skipped_pushed,
            "intervals_stored": self.intervals_stored,
            "intervals_refused": self.intervals_refused,
            "clocks_corrected": self.clocks_corrected,
            "clock_corrections_failed": self.clock_corrections_failed,
            "clock_reference": self.clock_reference,
            "config_findings": self.config_findings,
            "unstored": self.unstored,
            "claims_released": self.claims_released,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
        }


def clock_options(settings: Settings) -> dict[str, Any]:
    """EngineConfig's clock fields from the service settings (run and collect share it)."""
    return {
        "accountable": settings.collect_accountable_user,
        "clock_target_fraction": settings.clock_target_fraction,
        "reference": ReferenceConfig(
            servers=tuple(settings.clock_reference_servers),
            max_offset_s=settings.clock_reference_max_offset_s,
            timeout_s=settings.clock_reference_timeout_s,
        ),
    }


def current_cycle(now: datetime | None = None) -> datetime:
    """The cycle a run belongs to: the UTC hour in which it starts."""
    now = now or datetime.now(UTC)
    return now.replace(minute=0, second=0, microsecond=0)


EndpointKey = tuple[str, int] | tuple[str, str]


def _endpoint_key(target: MeterConfig) -> EndpointKey:
    """What ``per_endpoint`` bounds: a gateway port (several meters behind one port must
    not be hammered at once); MQTT meters share a broker, not a link: per meter."""
    if target.protocol == "mqtt":
        return ("mqtt", target.serial)
    ep = target.endpoints[0]
    return (ep.host, ep.port)


class _Pool:
    """The cycle's claimed sessions: waiting for a worker, waiting for their endpoint, or
    running. ``open`` counts all of them; ``wake`` is set when it drops to ``low``."""

    def __init__(self, wake: asyncio.Event, low: int) -> None:
        self.wake = wake
        self.low = low
        self.open = 0
        self.ready: deque[int] = deque()
        self.idle: deque[asyncio.Future[None]] = deque()  # workers waiting for a session
        self.on_endpoint: Counter[EndpointKey] = Counter()
        self.parked: dict[EndpointKey, deque[int]] = {}
        self.stopping = False

    def push(self, meter_ids: list[int]) -> None:
        self.open += len(meter_ids)
        self.ready.extend(meter_ids)
        for _ in meter_ids:
            self._wake_one()

    def stop(self) -> None:
        self.stopping = True
        while self.idle:
            self._wake_one()

    def _wake_one(self) -> None:
        while self.idle:
            worker = self.idle.popleft()
            if not worker.done():
                worker.set_result(None)
                return

    async def take(self) -> int | None:
        """The next claimed meter, or None once the pool stops."""
        while not self.ready:
            if self.stopping:
                return None
            worker = asyncio.get_running_loop().create_future()
            self.idle.append(worker)
            await worker
        return self.ready.popleft()

    def done(self) -> None:
        self.open -= 1
        if self.open <= self.low:
            self.wake.set()


class Collector:
    """One collector process. Several may share a fleet through the database."""

    def __init__(
        self,
        db_url: str,
        box: SecretBox,
        config: EngineConfig | None = None,
        collector_id: str | None = None,
    ) -> None:
        self.db_url = db_url
        self.box = box
        self.config = config or EngineConfig()
        self.id = collector_id or claims.new_collector_id()
        self._active: set[datetime] = set()  # cycles running now in this collector
        self._locked: dict[int, set[int]] = {}  # meter -> access levels not to present now
        self._clock_block: str | None = None  # why no clock may be set in this cycle
        self.current: CycleSummary | None = None  # the cycle running or last run
        self._drivers: dict[str, Driver] = {}

    async def run_cycle(
        self,
        cycle: datetime | None = None,
        *,
        frontier: str | None = None,
        force: bool = False,
        now: datetime | None = None,
    ) -> CycleSummary:
        """Collect every due meter of the fleet (or of ``frontier``) once for ``cycle``.

        ``force`` ignores the failure backoff (on-demand collection). Never raises for a
        failure on the way (a database outage, a bug): the summary's ``errors`` say what
        went wrong, and what was stored before it stays stored for the next stages.
        """
        t0 = time.perf_counter()
        if cycle is None:
            # An on-demand run is its own cycle (the instant it was asked, to the
            # microsecond), so it reads the meters even when this hour's scheduled cycle, or
            # another on-demand run a moment before, has already claimed them.
            moment = now or datetime.now(UTC)
            cycle = moment if force else current_cycle(moment)
        summary = self.current = CycleSummary(cycle)  # read by progress displays
        with cycle_pace():
            await self._run(cycle, frontier, force, now, summary)
        summary.seconds = time.perf_counter() - t0
        metrics.CYCLE_SECONDS.set(summary.seconds)
        metrics.METERS_BACKED_OFF.set(summary.skipped_backoff)
        return summary

    async def _run(
        self,
        cycle: datetime,
        frontier: str | None,
        force: bool,
        now: datetime | None,
        summary: CycleSummary,
    ) -> None:
        try:
            async with await psycopg.AsyncConnection.connect(
                self.db_url, **CONNECT_OPTIONS
            ) as conn:
                await claims.register(conn, self.id)
                await self._release_earlier(conn)
                targets = await active_meters_async(conn, self.box, frontier=frontier)
                due = await self._due(conn, targets, force, summary)
                self._locked = await _auth_locked(
                    conn, [t.meter_id for t in due], self.config.max_wrong_passwords
                )
                # Level 1 refused too often: not even a forced run presents it again.
                locked_out = [t for t in due if 1 in self._locked.get(t.meter_id, ())]
                summary.skipped_auth = len(locked_out)
                by_id = {t.meter_id: t for t in due if t not in locked_out}
                since = await self._since(conn, list(by_id))
                if by_id:
                    self._clock_block = await self._clock_block_reason(conn)
                    summary.clock_reference = self._clock_block
            summary.meters = len(by_id)
            if by_id:
                self._active.add(cycle)
                try:
                    await self._collect(cycle, by_id, since, summary, now)
                finally:
                    self._active.discard(cycle)
        except Exception as exc:  # noqa: BLE001 - reported in the summary, never swallowed
            (log.error if isinstance(exc, psycopg.Error) else log.exception)(
                "collection cycle %s failed: %s", cycle.isoformat(), exc
            )
            summary.errors.append(f"{type(exc).__name__}: {exc}")

    async def _clock_block_reason(self, conn: psycopg.AsyncConnection) -> str | None:
        """Why no meter clock may be set this cycle: nobody accountable for the level-2
        access (unset, unknown, disabled or level 1), or the CGM's own clock not shown to
        be on official time."""
        who = self.config.accountable
        if who is None:
            return (
                "no accountable user configured for automatic level-2 access "
                "(CGM_COLLECT_ACCOUNTABLE_USER)"
            )
        cur = await conn.execute("SELECT level, active FROM app_user WHERE username = %s", (who,))
        row = await cur.fetchone()
        await conn.commit()
        if row is None or row != (2, True):
            return f"accountable user {who!r} is not an active level-2 user"
        if self.config.reference is None:
            return None
        check = await check_reference_async(self.config.reference)
        if check.ok:
            log.info("clock reference: %s", check.detail)
            metrics.CLOCK_REFERENCE_OK.set(1)
            return None
        log.error("meter clocks will not be set: %s", check.detail)
        metrics.CLOCK_REFERENCE_OK.set(0)
        return f"CGM clock not on official time: {check.detail}"

    async def _release_earlier(self, conn: psycopg.AsyncConnection) -> None:
        """Release this collector's unfinished claims of cycles it no longer runs (a cycle
        that ended while the database was away could not release them then)."""
        cur = await conn.execute(
            """DELETE FROM collection_claim
               WHERE collector = %s AND done_at IS NULL AND NOT cycle = ANY(%s)""",
            (self.id, list(self._active)),
        )
        await conn.commit()
        if cur.rowcount:
            log.warning("released %d unfinished claims of earlier cycles", cur.rowcount)

    async def _due(
        self,
        conn: psycopg.AsyncConnection,
        targets: list[MeterConfig],
        force: bool,
        summary: CycleSummary,
    ) -> list[MeterConfig]:
        if force or not targets:
            return targets
        # Backoff never keeps a meter unread (its clock unchecked) past clock_check_every;
        # an hour less, so the hourly cycle that reaches it is not the one after.
        cur = await conn.execute(
            """SELECT meter_id FROM meter_health
               WHERE meter_id = ANY(%s) AND next_attempt_at > now()
                 AND last_attempt > now() - %s""",
            (
                [t.meter_id for t in targets],
                max(HOUR, self.config.clock_check_every - HOUR),
            ),
        )
        waiting = {r[0] for r in await cur.fetchall()}
        summary.skipped_backoff = len(waiting)
        # MQTT meters kept current by their pushes need no session this hour.
        current = await pushed_recently(conn, targets)
        summary.skipped_pushed = len(current - waiting)
        return [t for t in targets if t.meter_id not in waiting | current]

    async def _since(self, conn: psycopg.AsyncConnection, ids: list[int]) -> dict[int, datetime]:
        """Where each meter's catch-up starts: the interval after the last one stored."""
        last = await last_interval(conn, ids)
        return {m: t + HOUR for m, t in last.items()}

    async def _collect(
        self,
        cycle: datetime,
        by_id: dict[int, MeterConfig],
        since: dict[int, datetime],
        summary: CycleSummary,
        now: datetime | None,
    ) -> None:
        """Claim, interrogate and store, as structured tasks: whatever happens, every
        session task is awaited or cancelled, the writer drains what the sessions produced,
        the heartbeat stops, and the cycle's unfinished claims are released."""
        queue: asyncio.Queue[MeterOutcome | None] = asyncio.Queue(
            maxsize=2 * self.config.write_batch
        )
        claim_link, write_link = Link(self.db_url), Link(self.db_url)
        wake = asyncio.Event()
        pool = _Pool(wake, low=self.config.max_sessions)
        beat = asyncio.create_task(self._heartbeat(claim_link))
        writer = asyncio.create_task(self._writer(write_link, cycle, queue, summary))
        workers = [
            asyncio.create_task(self._worker(pool, by_id, since, queue, now, summary))
            for _ in range(self.config.max_sessions)
        ]
        try:
            await self._claim_and_run(claim_link, cycle, by_id, pool, writer, summary)
            pool.stop()  # every claimed session has ended: the workers are idle
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
            for result in await asyncio.gather(*workers, return_exceptions=True):
                if isinstance(result, BaseException) and not isinstance(
                    result, asyncio.CancelledError
                ):
                    summary.errors.append(f"session: {type(result).__name__}: {result}")
            if not writer.done():
                await queue.put(None)  # the writer stores what is queued, then stops
            (result,) = await asyncio.gather(writer, return_exceptions=True)
            if isinstance(result, BaseException):
                summary.errors.append(f"writer: {type(result).__name__}: {result}")
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)
            await self._release(claim_link, cycle, summary)
            await claim_link.close()
            await write_link.close()

    async def _claim_and_run(
        self,
        link: Link,
        cycle: datetime,
        by_id: dict[int, MeterConfig],
        pool: _Pool,
        writer: asyncio.Task[None],
        summary: CycleSummary,
    ) -> None:
        ids = list(by_id)
        # Collectors that start together walk the fleet from different places, so their
        # inserts do not queue behind each other's on the same keys.
        turn = hash(self.id) % len(ids) if ids else 0
        ids = ids[turn:] + ids[:turn]
        within = self.config.db_outage.total_seconds()
        loop = asyncio.get_running_loop()
        # Claim ahead by one pool of sessions, no more: the rest of the fleet stays free for
        # the other collectors, and each claim statement claims hundreds of meters (a claim
        # per finished session was a database round trip per session).
        ahead = self.config.max_sessions
        recheck = min(5.0, self.config.stale_after.total_seconds() / 6)
        fresh = ids  # not yet seen claimed in this walk through the list
        walk_claimed = 0  # claimed since the walk began at the head of the list
        next_claim = 0.0
        settled = False  # the last claim found nothing, with no session of ours open
        wake = pool.wake
        writer.add_done_callback(lambda _: wake.set())
        while True:
            if writer.done():
                writer.result()  # raises what stopped it; no session may wait on it forever
                raise RuntimeError("the writer stopped before the cycle ended")
            if pool.open <= ahead and loop.time() >= next_claim:
                limit = min(self.config.claim_batch, 2 * ahead - pool.open)
                # A window of the list, not the rest of it: a statement carrying every
                # unclaimed id made a cycle's claims O(fleet²). Stale claims are looked for
                # (over the whole list) when the window reaches the end of the list.
                offered = fresh[: self.config.claim_window]
                mine, scanned = await retrying(
                    "claiming meters",
                    link,
                    functools.partial(
                        claims.claim,
                        collector=self.id,
                        cycle=cycle,
                        meter_ids=ids,
                        fresh=offered,
                        limit=limit,
                        stale_after=self.config.stale_after,
                        take_over=len(offered) == len(fresh),
                    ),
                    within=within,
                )
                pool.push(mine)
                walk_claimed += len(mine)
                fresh = fresh[scanned:]
                if fresh:
                    continue
                # The walk reached the end of the list. Released claims (another
                # collector's unstored outcomes) and stale ones are looked for over the
                # whole list, now and then, not after every session.
                exhausted = not walk_claimed  # a whole walk found nothing
                settled = exhausted and not pool.open
                fresh, walk_claimed = ids, 0
                next_claim = loop.time() + (recheck if exhausted else 0.0)
                if not exhausted:
                    continue
            if pool.open:
                # Woken by a finished session that leaves room, or by the writer stopping.
                wake.clear()
                if pool.open <= ahead or writer.done():
                    if writer.done() or next_claim <= loop.time():
                        continue
                    try:
                        async with asyncio.timeout(next_claim - loop.time()):
                            await wake.wait()
                    except TimeoutError:
                        pass
                else:
                    await wake.wait()
                continue
            if not settled:  # sessions ended since the last claim: claim once more first
                next_claim = 0.0
                continue
            if not await retrying(
                "checking claims", link, lambda c: self._others_open(c, cycle, ids), within=within
            ):
                break
            await asyncio.sleep(max(0.0, next_claim - loop.time()))
            settled = False

    async def _worker(
        self,
        pool: _Pool,
        by_id: dict[int, MeterConfig],
        since: dict[int, datetime],
        queue: asyncio.Queue[MeterOutcome | None],
        now: datetime | None,
        summary: CycleSummary,
    ) -> None:
        """Run claimed sessions one after another until the pool stops: ``max_sessions``
        workers bound the sessions in flight, and a meter whose endpoint already has
        ``per_endpoint`` sessions waits for one of them to end (its worker runs it next),
        instead of a task and two semaphores per session."""
        per_endpoint = self.config.per_endpoint
        while (meter_id := await pool.take()) is not None:
            target = by_id[meter_id]
            key = _endpoint_key(target)
            if pool.on_endpoint[key] >= per_endpoint:
                pool.parked.setdefault(key, deque()).append(meter_id)
                continue
            pool.on_endpoint[key] += 1
            try:
                while True:
                    try:
                        await self._one(target, since.get(meter_id), queue, now)
                    except Exception as exc:  # noqa: BLE001 - its claim is released at the end
                        log.error("session of %s failed: %r", target.serial, exc)
                        summary.errors.append(f"session: {type(exc).__name__}: {exc}")
                    pool.done()
                    parked = pool.parked.get(key)
                    if not parked:
                        break
                    meter_id = parked.popleft()
                    target = by_id[meter_id]
            finally:
                pool.on_endpoint[key] -= 1

    async def _release(self, link: Link, cycle: datetime, summary: CycleSummary) -> None:
        """Give back the cycle's claims this collector did not finish (sessions cancelled,
        outcomes not stored), so another run of the cycle reads those meters."""

        async def release(conn: psycopg.AsyncConnection) -> int:
            cur = await conn.execute(
                """DELETE FROM collection_claim
                   WHERE cycle = %s AND collector = %s AND done_at IS NULL""",
                (cycle, self.id),
            )
            await conn.commit()
            return cur.rowcount

        try:
            released = await retrying(
                "releasing claims", link, release, within=self.config.db_outage.total_seconds()
            )
        except psycopg.Error as exc:  # still down: the claims go stale with our heartbeat
            summary.errors.append(f"claims not released: {exc}")
            log.error("cycle %s: claims not released: %s", cycle.isoformat(), exc)
            return
        summary.claims_released = released
        if released:
            log.warning("cycle %s: %d unfinished claims released", cycle.isoformat(), released)

    async def _heartbeat(self, link: Link) -> None:
        interval = self.config.stale_after.total_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await link.run(lambda c: claims.heartbeat(c, self.id))
            except psycopg.Error as exc:  # a database restart: the next beat reconnects
                log.warning("heartbeat failed: %s", exc)

    async def _others_open(
        self, conn: psycopg.AsyncConnection, cycle: datetime, ids: list[int]
    ) -> bool:
        """Whether other collectors still hold open claims on our targets this cycle."""
        cur = await conn.execute(
            """SELECT count(*) FROM collection_claim
               WHERE cycle = %s AND done_at IS NULL AND meter_id = ANY(%s)
                 AND collector <> %s""",
            (cycle, ids, self.id),
        )
        row = await cur.fetchone()
        await conn.commit()
        return bool(row and row[0])

    def _driver(self, protocol: str) -> Driver:
        """The protocol's driver; DLMS gets this database's HLS-GMAC counter store."""
        driver = self._drivers.get(protocol)
        if driver is None:  # import_module per session cost more than the lookup
            driver = self._drivers[protocol] = get_driver(protocol)
        if protocol == "dlms":
            store = getattr(driver, "counter_store", None)
            if getattr(store, "db_url", None) != self.db_url:
                driver.counter_store = PgInvocationCounterStore(self.db_url)  # type: ignore[attr-defined]
        return driver

    async def _one(
        self,
        target: MeterConfig,
        since: datetime | None,
        queue: asyncio.Queue[MeterOutcome | None],
        now: datetime | None,
    ) -> None:
        started = datetime.now(UTC)
        limit = self.config.session_deadline.total_seconds()
        try:
            async with asyncio.timeout(limit):
                outcome = await interrogate(
                    self._driver(target.protocol),
                    target,
                    since=since,
                    policy=self.config.policy,
                    now=now,
                    level2_allowed=2 not in self._locked.get(target.meter_id, ()),
                    clock_target_fraction=self.config.clock_target_fraction,
                    clock_block=self._clock_block,
                    columnar=True,
                )
        except TimeoutError:
            # A meter that keeps answering slowly must not hold the cycle: its data stays
            # in its memory and the next cycle resumes where the store stops.
            outcome = MeterOutcome(
                target=target,
                started_at=started,
                finished_at=datetime.now(UTC),
                result="timeout",
                error=f"timeout: session exceeded {limit:g} s",
                duration_s=limit,
            )
        _child(metrics.SESSIONS, target.protocol, outcome.result).inc()
        _child(metrics.SESSION_SECONDS, target.protocol).observe(outcome.duration_s)
        await queue.put(outcome)

    async def _writer(
        self,
        link: Link,
        cycle: datetime,
        queue: asyncio.Queue[MeterOutcome | None],
        summary: CycleSummary,
    ) -> None:
        """Store outcomes in batches until the end marker. Never stops on a batch's failure:
        a database outage is waited out (for ``db_outage``), anything else is stored outcome
        by outcome so only the outcome at fault is dropped (its claim is then released)."""
        done = False
        linger, most = self.config.write_linger, self.config.write_batch
        while not done:
            item = await queue.get()
            if item is None:
                break
            batch, size = [item], item.entry_count
            if linger and queue.qsize() < most - 1:
                # Sessions end one by one: wait a moment so a transaction stores many (one
                # per outcome cost more database round trips than the sessions' own work).
                await asyncio.sleep(linger)
            while len(batch) < most and size < self.config.write_entries and not queue.empty():
                item = queue.get_nowait()
                if item is None:
                    done = True
                    break
                batch.append(item)
                size += item.entry_count
            await self._store(link, batch, cycle, summary)

    async def _store(
        self, link: Link, batch: list[MeterOutcome], cycle: datetime, summary: CycleSummary
    ) -> None:
        try:
            await retrying(
                "storing outcomes",
                link,
                lambda c: store_outcomes(c, batch, cycle, self.id, self.config, summary),
                within=self.config.db_outage.total_seconds(),
            )
        except psycopg.OperationalError as exc:
            # The database stayed away: the meters still hold these intervals, and the next
            # cycle reads them again from where the store stops.
            summary.unstored += len(batch)
            summary.errors.append(f"{len(batch)} outcomes not stored: {exc}")
            log.error("%d outcomes not stored (database unavailable): %s", len(batch), exc)
        except Exception as exc:  # noqa: BLE001 - the writer must outlive any one outcome
            if len(batch) > 1:
                log.warning("storing a batch failed (%s); storing its outcomes one by one", exc)
                for o in batch:
                    await self._store(link, [o], cycle, summary)
                return
            log.exception("%s: outcome not stored", batch[0].target.serial)
            summary.unstored += 1
            summary.failed["store_error"] += 1
            summary.errors.append(f"{batch[0].target.serial}: {type(exc).__name__}: {exc}")


# --- storing outcomes ------------------------------------------------------------------


@dataclass(frozen=True)
class Refused:
    """One value a meter gave that was not stored, and why (``finding``: the stable form of
    the reason, recorded once in the hoja de vida as a configuration finding)."""

    meter_id: int
    channel: int | None
    start: datetime | None
    value: float | None
    quality: int | None
    reason: str
    finding: str

    @property
    def kind(self) -> str:
        """A low-cardinality label for the metric."""
        for prefix, kind in (("implausible", "implausible"), ("not stored", "not_stored")):
            if self.reason.startswith(prefix):
                return kind
        return "entry" if "period" in self.reason or "entries" in self.reason else "invalid"


@dataclass
class Stored:
    """What one batch stored and refused, per meter."""

    values: Counter[int] = field(default_factory=Counter)
    refused: list[Refused] = field(default_factory=list)

    def refusals(self, meter_id: int) -> Counter[str]:
        return Counter(r.reason for r in self.refused if r.meter_id == meter_id)


async def store_outcomes(
    conn: psycopg.AsyncConnection,
    batch: Sequence[MeterOutcome],
    cycle: datetime,
    collector: str,
    config: EngineConfig,
    summary: CycleSummary,
) -> None:
    """Store one batch of outcomes in one transaction.

    Values are screened per row before the write (:func:`cgm.storage.readings.row_problems`
    and the plausibility guard): a bad value is set aside for its meter with the reason,
    and the rest of the batch is stored.
    """
    now = datetime.now(UTC)
    began = time.perf_counter()
    async with conn.transaction():
        rows, stored, entries = await _reading_rows(conn, batch)
        rows = _screen(rows, batch, stored)
        await _write_isolated(conn, rows, collector, config, stored)
        _refusal_findings(batch, stored)
        await _meter_entries(conn, entries)
        await _refused_rows(conn, stored, cycle)
        await _snapshots(conn, batch)
        await _session_log(conn, batch, cycle, collector, stored)
        await _auth_refusals(conn, batch, config, summary)
        await _unreadable_alarms(conn, batch, config)
        await _health(conn, batch, config, now)
        await _hoja_de_vida(conn, batch, config, summary)
        await conn.execute(
            """UPDATE collection_claim SET done_at = now()
               WHERE meter_id = ANY(%s) AND cycle = %s AND collector = %s""",
            ([o.target.meter_id for o in batch], cycle, collector),
        )
    metrics.STORE_SECONDS.observe(time.perf_counter() - began)
    # One count everywhere: reading values (meter, channel, hour) inserted or superseded.
    summary.intervals_stored += sum(stored.values.values())
    summary.intervals_refused += len(stored.refused)
    for o in batch:
        label = (o.target.serial, o.target.frontier_code)
        if o.succeeded:
            summary.ok += 1
            _child(metrics.LAST_SUCCESS, *label).set(now.timestamp())
        else:
            summary.failed[o.result] += 1
        if o.clock is not None:
            offset = o.correction.after.offset if o.correction and o.correction.ok else None
            _child(metrics.CLOCK_OFFSET, *label).set(
                offset if offset is not None else o.clock.offset
            )
        n = stored.values.get(o.target.meter_id, 0)
        if n:
            _child(metrics.INTERVALS_STORED, o.target.protocol).inc(n)
    for r in stored.refused:
        metrics.INTERVALS_REFUSED.labels(r.kind).inc()


@functools.cache
def _child(metric: Any, *labels: str) -> Any:
    """A metric's child for these labels, looked up once (``labels()`` takes a lock and
    builds the key on every call: ~6 % of the engine's CPU, several calls per session).
    Per-meter children live as long as the process, as they would without the cache."""
    return metric.labels(*labels)


class _Rows:
    """Reading rows gathered column-wise for one ``readings_array``.

    Times are kept as epoch microseconds: converting each row's ``datetime`` inside
    ``readings_array`` cost more than half the CPU of a 35-day catch-up
    (``benchmarks/screen.py``)."""

    def __init__(self) -> None:
        self.cols: tuple[list, ...] = ([], [], [], [], [], [])

    def add(
        self,
        meter_id: int,
        channel: int,
        start: datetime,
        value: float,
        quality: Quality | int,
        collected_at: datetime,
    ) -> None:
        m, c, t, v, q, at = self.cols
        m.append(meter_id)
        c.append(channel)
        t.append(_epoch_us(start))
        v.append(value)
        q.append(int(quality))
        at.append(_epoch_us(collected_at))

    def hourly(
        self,
        meter_id: int,
        entries: Sequence[ProfileEntry],
        base: int,
        spans: Sequence[tuple[datetime, datetime]],
        collected_at: datetime,
    ) -> list[ProfileEntry]:
        """Add the hourly ``entries`` as rows, as a session's columns are added (what
        :func:`to_hourly` makes of them: each value with the entry's status byte, its
        rollover flag, and ``base``); return the other entries, for :func:`to_hourly`, which
        also refuses, with the reason, a chunk with an unknown channel or a naive time."""
        cols = ProfileColumns()
        rest = cols.add(entries)
        if len(cols):
            self.columns(meter_id, cols, base, spans, collected_at)
        return rest

    def columns(
        self,
        meter_id: int,
        cols: ProfileColumns,
        base: int,
        spans: Sequence[tuple[datetime, datetime]],
        collected_at: datetime,
    ) -> None:
        """Add a session's hourly columns as rows: the same rows :meth:`hourly` makes of
        those entries (``base`` and the large-correction flag added here)."""
        m, c, t, v, q, at = self.cols
        n = len(cols)
        m.extend([meter_id] * n)
        c.extend(cols.channel)
        t.extend(cols.start)
        v.extend(cols.value)
        at.extend([_epoch_us(collected_at)] * n)
        if not spans:
            q.extend([f | base for f in cols.flags] if base else cols.flags)
            return
        start = np.array(cols.start, dtype="i8")
        flags = np.array(cols.flags, dtype="i8") | base
        hit = np.zeros(n, dtype=bool)
        for since, until in spans:  # as _corrected: the hour overlaps [since, until]
            hit |= (_epoch_us(since) < start + _HOUR_US) & (start <= _epoch_us(until))
        flags[hit] |= _LARGE_CORRECTION
        q.extend(flags.tolist())

    def array(self) -> np.ndarray:
        if not self.cols[0]:
            return np.empty(0, READING_DTYPE)
        m, c, t, v, q, at = self.cols
        us = "M8[us]"
        return readings_array(
            m, c, np.array(t, dtype="i8").view(us), v, q, np.array(at, dtype="i8").view(us)
        )


_CHANNEL_IDS = CHANNEL_IDS
_LARGE_CORRECTION = int(Quality.LARGE_CLOCK_CORRECTION)
_HOUR_US = 3_600_000_000
_epoch_us = epoch_us


def _base_quality(o: MeterOutcome) -> Quality:
    return Quality.BACKUP_CHANNEL if o.channel_used == "backup" else Quality(0)


_ENTRY_FINDINGS = (
    ("not aligned to its", "profile entries not aligned to their capture period"),
    ("two different entries", "the meter gave two different entries for one start"),
)


def _entry_finding(reason: str) -> str:
    return next((f for key, f in _ENTRY_FINDINGS if key in reason), reason)


async def _reading_rows(
    conn: psycopg.AsyncConnection, batch: Sequence[MeterOutcome]
) -> tuple[np.ndarray, Stored, list[tuple[int, ProfileEntry, datetime]]]:
    """Hourly rows of the batch (sub-hourly profiles summed), the entries refused on the
    way, and the sub-hourly entries kept for audit."""
    rows, stored = _Rows(), Stored()
    entries: list[tuple[int, ProfileEntry, datetime]] = []
    corrections = await _corrections(conn, batch)
    for o in batch:
        base = int(_base_quality(o))
        at = o.finished_at or o.started_at
        meter_id = o.target.meter_id
        spans = corrections.get(meter_id, ())
        if o.columns is not None and len(o.columns):
            rows.columns(meter_id, o.columns, base, spans, at)
        # Hourly entries (nearly every meter) become rows directly: per entry, not per value,
        # and with no object per value (a 30-day first contact brings ~2,900 values a meter).
        rest = rows.hourly(meter_id, o.entries, base, spans, at)
        if not rest:
            continue
        hourly = to_hourly(rest)
        entries += [(meter_id, e, at) for e in hourly.sub_hourly]
        for r in hourly.refused:
            ch = channel_id(r.channel) if r.channel is not None else None
            stored.refused.append(
                Refused(
                    meter_id, ch, r.start, r.value, r.status, r.reason, _entry_finding(r.reason)
                )
            )
        for v in hourly.values:
            q = base | v.quality
            if _corrected(spans, v.start):
                q |= Quality.LARGE_CLOCK_CORRECTION
            rows.add(meter_id, channel_id(v.channel), v.start, v.value, q, at)
    await _derived_rows(conn, batch, rows)
    return rows.array(), stored, entries


def _oldest(o: MeterOutcome) -> datetime:
    """The earliest interval start an outcome brings (it has entries)."""
    starts = [e.start for e in o.entries[:1]]
    if o.columns is not None and (first := o.columns.first_start()) is not None:
        starts.append(first)
    return min(starts)


def _corrected(spans: Sequence[tuple[datetime, datetime]], start: datetime) -> bool:
    """Whether the hour at ``start`` overlaps a large clock correction's span."""
    return any(since < start + HOUR and start <= at for since, at in spans)


def _screen(rows: np.ndarray, batch: Sequence[MeterOutcome], stored: Stored) -> np.ndarray:
    """The rows that may be written; the others go to ``stored.refused`` with the reason."""
    if not len(rows):
        return rows
    reasons = row_problems(rows)
    limits = {o.target.meter_id: _limit(o.target) for o in batch}
    ids = np.array(sorted(limits), dtype="i8")
    kwh = np.array([limits[m].kwh if limits[m] else np.inf for m in ids.tolist()])
    row_limit = kwh[np.searchsorted(ids, rows["meter_id"])]
    over = (reasons == None) & (rows["value"] > row_limit)  # noqa: E711
    for i in np.flatnonzero(over):
        lim = limits[int(rows["meter_id"][i])]
        assert lim is not None
        reasons[i] = (
            f"implausible: {rows['value'][i]:.3f} in one hour exceeds {lim.kwh:.3f} "
            f"allowed by {lim.basis}"
        )
    bad = reasons != None  # noqa: E711
    for i in np.flatnonzero(bad):
        r = rows[i]
        reason = str(reasons[i])
        lim = limits[int(r["meter_id"])]
        finding = (
            f"interval energy above what {lim.basis} allows"
            if reason.startswith("implausible") and lim is not None
            else reason
        )
        stored.refused.append(
            Refused(
                int(r["meter_id"]),
                int(r["channel"]),
                from_us(r["interval_start"]) if not np.isnat(r["interval_start"]) else None,
                float(r["value"]),
                int(r["quality"]),
                reason,
                finding,
            )
        )
    return rows[~bad]


def _limit(target: MeterConfig) -> HourlyLimit | None:
    return hourly_limit(
        ct_ratio=target.ct_ratio,
        vt_ratio=target.vt_ratio,
        adjustment_factor=target.adjustment_factor,
        params=target.params,
        installed_capacity_mva=target.installed_capacity_mva,
    )


async def _write_isolated(
    conn: psycopg.AsyncConnection,
    rows: np.ndarray,
    collector: str,
    config: EngineConfig,
    stored: Stored,
    source: str | None = None,
) -> None:
    """Write the screened rows; should the batch still be refused, write meter by meter so
    only the meter at fault loses its rows (each write is a savepoint of the caller's
    transaction). A lost connection is not bad data: it propagates."""
    if not len(rows):
        return
    source = source or f"collector:{collector}"
    try:
        result = await write_readings(conn, rows, source=source, actor=config.actor)
        stored.values.update(result.stored_by_meter or {})
        return
    except (InvalidRows, psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
        log.warning("readings batch refused, writing meter by meter: %s", exc)
    for meter_id in np.unique(rows["meter_id"]).tolist():
        part = rows[rows["meter_id"] == meter_id]
        try:
            result = await write_readings(conn, part, source=source, actor=config.actor)
            stored.values.update(result.stored_by_meter or {})
        except (InvalidRows, psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
            reason = f"not stored: {exc}"
            for r in part:
                stored.refused.append(
                    Refused(
                        meter_id,
                        int(r["channel"]),
                        from_us(r["interval_start"]),
                        float(r["value"]),
                        int(r["quality"]),
                        reason,
                        f"not stored: {type(exc).__name__}",
                    )
                )


def _refusal_findings(batch: Sequence[MeterOutcome], stored: Stored) -> None:
    """Refusals are configuration faults of the meter or its registry entry: findings."""
    by_meter: dict[int, set[str]] = {}
    for r in stored.refused:
        by_meter.setdefault(r.meter_id, set()).add(r.finding)
    for o in batch:
        extra = by_meter.get(o.target.meter_id, set()) - set(o.config_violations)
        o.config_violations.extend(sorted(extra))


async def _meter_entries(
    conn: psycopg.AsyncConnection, entries: list[tuple[int, ProfileEntry, datetime]]
) -> None:
    """The sub-hourly entries behind the stored hours, as the meter gave them."""
    rows = [
        (m, channel_id(ch), e.start, int(e.period.total_seconds()), v, e.status, at)
        for m, e, at in entries
        for ch, v in e.values.items()
    ]
    if not rows:
        return
    cols = [list(c) for c in zip(*rows, strict=True)]
    await conn.execute(
        """INSERT INTO meter_entry AS x
             (meter_id, channel, entry_start, period_s, value, status, collected_at)
           SELECT * FROM unnest(%s::bigint[], %s::smallint[], %s::timestamptz[],
                                %s::integer[], %s::float8[], %s::integer[], %s::timestamptz[])
           ON CONFLICT (meter_id, channel, entry_start) DO UPDATE
             SET value = excluded.value, status = excluded.status, period_s = excluded.period_s,
                 collected_at = excluded.collected_at
             WHERE x.value <> excluded.value OR x.status <> excluded.status
                OR x.period_s <> excluded.period_s""",
        cols,
    )


async def _refused_rows(conn: psycopg.AsyncConnection, stored: Stored, cycle: datetime) -> None:
    if not stored.refused:
        return
    async with conn.cursor() as cur:
        await cur.executemany(
            """INSERT INTO reading_refused
                 (meter_id, channel, interval_start, value, quality, collected_at, cycle, reason)
               VALUES (%s, %s, %s, %s, %s, now(), %s, %s)""",
            [
                (r.meter_id, r.channel, r.start, r.value, r.quality, cycle, r.reason)
                for r in stored.refused
            ],
        )


async def _corrections(
    conn: psycopg.AsyncConnection, batch: Sequence[MeterOutcome]
) -> dict[int, list[tuple[datetime, datetime]]]:
    """Spans [from, at] of large clock corrections (past the limit) of these meters over
    the intervals being stored: logged ones, and the batch's own (made after its read)."""
    read = [o for o in batch if o.entry_count]
    if not read:
        return {}
    ids = [o.target.meter_id for o in read]
    oldest = min(_oldest(o) for o in read)
    out: dict[int, list[tuple[datetime, datetime]]] = {}
    for meter_id, since, at in await clock_corrections(conn, ids, oldest):
        out.setdefault(meter_id, []).append((since, at))
    for o in batch:
        c = o.correction
        if o.entry_count and c is not None and c.set_to is not None:
            if abs(c.before.offset) > o.target.clock_limit_s:
                at = o.finished_at or c.set_to
                span = (at - timedelta(seconds=abs(c.before.offset)), at)
                out.setdefault(o.target.meter_id, []).append(span)
    return out


async def _derived_rows(
    conn: psycopg.AsyncConnection, batch: Sequence[MeterOutcome], rows: _Rows
) -> None:
    """Hourly intervals from register snapshots, for meters that have no profile."""
    targets = [o for o in batch if not o.has_profile and o.registers]
    if not targets:
        return
    cur = await conn.execute(
        """SELECT meter_id, channel, read_at, value FROM register_snapshot
           WHERE meter_id = ANY(%s) AND read_at > now() - interval '3 hours'""",
        ([o.target.meter_id for o in targets],),
    )
    history: dict[tuple[int, int], list[Snapshot]] = {}
    for meter_id, ch, read_at, value in await cur.fetchall():
        history.setdefault((meter_id, ch), []).append(Snapshot(read_at, value))
    for o in targets:
        register_max = o.target.params.get("register_max")
        q = _base_quality(o) | Quality.DERIVED_FROM_REGISTERS
        for r in o.registers:
            key = (o.target.meter_id, channel_id(r.channel))
            snaps = [*history.get(key, []), Snapshot(r.read_at, r.value)]
            for iv in derive_intervals(snaps, register_max=register_max):
                wrap = Quality.REGISTER_ROLLOVER if iv.rollover else Quality(0)
                rows.add(key[0], key[1], iv.start, iv.value, q | wrap, r.read_at)


# One statement per table and batch (arrays through ``unnest``), not one per row: measured
# at 2,000 meters, per-row ``executemany`` cost the collector ~3 s of CPU per cycle and the
# database as much again, on the same two cores as the sessions.


# An epoch-microseconds bigint as timestamptz, exactly (the bigint becomes a float8, exact
# below 2^53 µs, ~285 years after 1970; the interval keeps whole microseconds).
US_TO_TIMESTAMPTZ = "timestamptz 'epoch' + {} * interval '1 microsecond'"


async def _snapshots(conn: psycopg.AsyncConnection, batch: Sequence[MeterOutcome]) -> None:
    rows = [
        (o.target.meter_id, _CHANNEL_IDS[r.channel], _epoch_us(r.read_at), r.value)
        for o in batch
        for r in o.registers
    ]
    if rows:
        m, c, t, v = (list(col) for col in zip(*rows, strict=True))
        # Times as epoch microseconds (exact: bigint to float8 below 2^53), not datetimes:
        # psycopg dumps a timestamptz array element by element, ~2 µs each.
        await conn.execute(
            """INSERT INTO register_snapshot (meter_id, channel, read_at, value)
               SELECT m, c, """ + US_TO_TIMESTAMPTZ.format("t") + """, v
               FROM unnest(%s::bigint[], %s::smallint[], %s::bigint[], %s::float8[])
                 AS u(m, c, t, v)
               ON CONFLICT DO NOTHING""",
            (m, c, t, v),
        )


async def _session_log(
    conn: psycopg.AsyncConnection,
    batch: Sequence[MeterOutcome],
    cycle: datetime,
    collector: str,
    stored: Stored,
) -> None:
    refusals = {o.target.meter_id: stored.refusals(o.target.meter_id) for o in batch}

    def error(o: MeterOutcome) -> str | None:
        refused = refusals[o.target.meter_id]
        if o.error or not refused:
            return o.error
        reason, n = refused.most_common(1)[0]
        return f"{sum(refused.values())} values refused ({n}: {reason})"

    # COPY, one row per outcome: the same rows as an INSERT over unnest(arrays), without
    # dumping 17 arrays element by element in Python (~7 % of the engine's CPU).
    async with conn.cursor() as cur, cur.copy(_COPY_SESSION) as copy:
        for o in batch:
            refused = refusals[o.target.meter_id]
            await copy.write_row(
                (
                    o.target.meter_id,
                    cycle,
                    collector,
                    o.started_at,
                    o.finished_at or o.started_at,
                    o.result,
                    error(o),
                    o.channel_used,
                    o.attempts,
                    o.entry_count,
                    o.clock.offset if o.clock else None,
                    bool(o.correction and o.correction.ok),
                    o.read_from,
                    o.read_to,
                    stored.values.get(o.target.meter_id, 0),
                    sum(refused.values()),
                    Jsonb(dict(refused)),
                )
            )


_COPY_SESSION = """COPY collection_session
    (meter_id, cycle, collector, started_at, finished_at, result, error, channel_used,
     attempts, entries_read, clock_offset_s, clock_corrected, read_from, read_to,
     intervals_stored, intervals_refused, refusals) FROM STDIN"""


async def _health(
    conn: psycopg.AsyncConnection,
    batch: Sequence[MeterOutcome],
    config: EngineConfig,
    now: datetime,
) -> None:
    # ON CONFLICT may touch a row once per statement: a batch holds each meter once (one
    # claim per meter and cycle); should it not, the later outcome is the one kept.
    latest = {o.target.meter_id: o for o in batch}
    outcomes = list(latest.values())
    await conn.execute(
        """INSERT INTO meter_health AS h
             (meter_id, consecutive_failures, last_result, last_attempt, last_success,
              next_attempt_at, clock_offset_s)
           SELECT m, CASE WHEN ok THEN 0 ELSE 1 END,
                  -- read, but its level-2 secret refused lately: not healthy
                  CASE WHEN ok AND EXISTS (
                      SELECT 1 FROM auth_refusal a
                      LEFT JOIN meter_credential c ON c.meter_id = a.meter_id AND c.level = 2
                      WHERE a.meter_id = m AND a.level = 2
                        AND a.at > now() - interval '24 hours'
                        AND (c.updated_at IS NULL OR a.at >= c.updated_at))
                       THEN 'auth_level2' ELSE r END,
                  %(now)s,
                  CASE WHEN ok THEN %(now)s::timestamptz END, NULL, off
           FROM unnest(%(m)s::bigint[], %(ok)s::boolean[], %(r)s::text[], %(off)s::float8[])
                AS u(m, ok, r, off)
           ON CONFLICT (meter_id) DO UPDATE SET
             consecutive_failures = CASE WHEN EXCLUDED.consecutive_failures = 0 THEN 0
                                         ELSE h.consecutive_failures + 1 END,
             last_result = EXCLUDED.last_result,
             last_attempt = EXCLUDED.last_attempt,
             last_success = coalesce(EXCLUDED.last_success, h.last_success),
             clock_offset_s = coalesce(EXCLUDED.clock_offset_s, h.clock_offset_s),
             next_attempt_at = CASE
               WHEN EXCLUDED.consecutive_failures = 0
                    OR h.consecutive_failures + 1 < %(after)s THEN NULL
               ELSE %(now)s + least(%(cap)s,
                    interval '1 hour' * power(2, h.consecutive_failures + 1 - %(after)s))
             END""",
        {
            "m": [o.target.meter_id for o in outcomes],
            "ok": [o.succeeded for o in outcomes],
            # Read, but a stored credential cannot be decrypted: not healthy either.
            "r": ["credential" if o.target.unreadable else o.result for o in outcomes],
            "off": [o.clock.offset if o.clock else None for o in outcomes],
            "now": now,
            "after": config.backoff_after,
            "cap": config.max_backoff,
        },
    )


async def _auth_locked(
    conn: psycopg.AsyncConnection, meter_ids: list[int], limit: int
) -> dict[int, set[int]]:
    """Access levels each meter refused ``limit`` times in 24 h with the secret registered
    now (refusals before the secret last changed do not count)."""
    if not meter_ids:
        return {}
    cur = await conn.execute(
        """SELECT r.meter_id, r.level FROM auth_refusal r
           LEFT JOIN meter_credential c ON c.meter_id = r.meter_id AND c.level = r.level
           WHERE r.meter_id = ANY(%s) AND r.at > now() - interval '24 hours'
             AND (c.updated_at IS NULL OR r.at >= c.updated_at)
           GROUP BY r.meter_id, r.level HAVING count(*) >= %s""",
        (meter_ids, limit),
    )
    out: dict[int, set[int]] = {}
    for meter_id, level in await cur.fetchall():
        out.setdefault(meter_id, set()).add(level)
    return out


async def _auth_refusals(
    conn: psycopg.AsyncConnection,
    batch: Sequence[MeterOutcome],
    config: EngineConfig,
    summary: CycleSummary,
) -> None:
    """Every refused authentication counts against the meter's daily budget and raises an
    alarm (level 2's alarm is the failed clock correction's)."""
    rows = [(o, level) for o in batch for level in o.auth_refused]
    if not rows:
        return
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO auth_refusal (meter_id, level, error) VALUES (%s, %s, %s)",
            [(o.target.meter_id, level, o.error if level == 1 else None) for o, level in rows],
        )
        await cur.executemany(
            """INSERT INTO frontier_log (frontier_id, meter_id, actor, kind, purpose, activities)
               VALUES (%s, %s, %s, %s, 'level-1 authentication refused', %s)""",
            [
                (
                    o.target.frontier_id,
                    o.target.meter_id,
                    config.actor,
                    ALARM,
                    Jsonb(
                        {
                            "level": 1,
                            "error": o.error,
                            "max_wrong_passwords_per_day": config.max_wrong_passwords,
                        }
                    ),
                )
                for o, level in rows
                if level == 1
            ],
        )
    for _, level in rows:
        summary.auth_refused += 1
        metrics.AUTH_REFUSALS.labels(str(level)).inc()


async def _unreadable_alarms(
    conn: psycopg.AsyncConnection, batch: Sequence[MeterOutcome], config: EngineConfig
) -> None:
    """A stored credential the key cannot decrypt: an alarm in the meter's hoja de vida
    (once a day while it lasts); its session says what it cost (not read, or no clock set)."""
    alarms = [
        (o.target.frontier_id, o.target.meter_id, config.actor, UNREADABLE_CREDENTIAL,
         {"credentials": list(o.target.unreadable), "result": o.result, "error": o.error})
        for o in batch
        if o.target.unreadable
    ]  # fmt: skip
    if alarms:
        await alarm_once(conn, alarms)


async def _hoja_de_vida(
    conn: psycopg.AsyncConnection,
    batch: Sequence[MeterOutcome],
    config: EngineConfig,
    summary: CycleSummary,
) -> None:
    """Level-2 accesses (art. 17), failed corrections and configuration findings."""
    rows = []
    for o in batch:
        t, c = o.target, o.correction
        if c is None:
            continue
        if c.ok:
            summary.clocks_corrected += 1
            metrics.CLOCK_CORRECTIONS.labels("ok").inc()
        elif not c.attempted:
            summary.clock_corrections_failed += 1
            metrics.CLOCK_CORRECTIONS.labels("not_attempted").inc()
            continue  # the refused level-2 secret already raised its alarm
        else:
            summary.clock_corrections_failed += 1
            metrics.CLOCK_CORRECTIONS.labels("refused" if c.blocked else "failed").inc()
        detail = {
            "offset_before_s": round(c.before.offset, 3),
            "offset_after_s": round(c.after.offset, 3) if c.after else None,
            "target_s": round(c.target_s, 3),
            "limit_s": t.clock_limit_s,
        }
        if c.accessed:
            # Art. 17: the level-2 access itself, done or not, naming who is accountable.
            assert config.accountable is not None
            activities = ["read clock", "set clock", "re-read clock"]
            proof = (
                f"clock re-read after setting: offset {c.after.offset:+.3f} s, "
                f"meter answering ({c.after.meter_time.isoformat()})"
                if c.after
                else None
            )
            rows.append(
                (
                    t.frontier_id,
                    t.meter_id,
                    config.accountable,
                    LEVEL2_ACCESS,
                    CLOCK_SYNC,
                    Jsonb(
                        {
                            "activities": activities,
                            "result": "done" if c.ok else "failed",
                            **detail,
                            "set_to": c.set_to.isoformat() if c.set_to else None,
                            "error": c.error,
                            "channel": o.channel_used,
                            "automatic": True,
                        }
                    ),
                    proof if c.ok or proof is None else f"{proof}; outside the target",
                )
            )
        if not c.ok:
            purpose = "clock correction refused" if c.blocked else "clock correction failed"
            rows.append(
                (
                    t.frontier_id,
                    t.meter_id,
                    config.actor,
                    ALARM,
                    purpose,
                    Jsonb({"offset_s": detail["offset_before_s"], **detail, "error": c.error}),
                    None,
                )
            )
    if rows:
        async with conn.cursor() as cur:
            await cur.executemany(
                """INSERT INTO frontier_log
                     (frontier_id, meter_id, actor, kind, purpose, activities, proof)
                   VALUES (%s, %s, %s, %s, %s, %s, %s)""",
                rows,
            )
    await _config_findings(conn, batch, config, summary)


async def _config_findings(
    conn: psycopg.AsyncConnection,
    batch: Sequence[MeterOutcome],
    config: EngineConfig,
    summary: CycleSummary,
) -> None:
    """Record a meter's configuration findings when they change, not every cycle."""
    checked = [o for o in batch if o.profile_config is not None or o.config_violations]
    if not checked:
        return
    cur = await conn.execute(
        "SELECT meter_id, config_findings FROM meter_health WHERE meter_id = ANY(%s)",
        ([o.target.meter_id for o in checked],),
    )
    known = {m: list(f) for m, f in await cur.fetchall()}
    for o in checked:
        findings = sorted(o.config_violations)
        if findings == sorted(known.get(o.target.meter_id, [])):
            continue
        await conn.execute(
            "UPDATE meter_health SET config_findings = %s WHERE meter_id = %s",
            (findings, o.target.meter_id),
        )
        if findings:
            summary.config_findings += len(findings)
            metrics.CONFIG_VIOLATIONS.inc(len(findings))
            await conn.execute(
                """INSERT INTO frontier_log
                     (frontier_id, meter_id, actor, kind, purpose, activities)
                   VALUES (%s, %s, %s, %s, 'profile configuration check', %s)""",
                (
                    o.target.frontier_id,
                    o.target.meter_id,
                    config.actor,
                    CONFIG_VIOLATION,
                    Jsonb(
                        {
                            "findings": findings,
                            "capture_period_s": (
                                o.profile_config.capture_period.total_seconds()
                                if o.profile_config
                                else None
                            ),
                            "depth": o.profile_config.depth if o.profile_config else None,
                        }
                    ),
                ),
            )
