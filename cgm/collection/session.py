"""Interrogating one meter: the session sequence, failover, retries and clock correction.

Database-free on purpose: it takes a :class:`MeterConfig` and a driver and returns a
:class:`MeterOutcome`, so the sequence is tested against the simulators directly and the
engine decides what to store.

Sequence (never two sessions to one meter at once):

1. level-1 session on the primary channel, retried with backoff, then the backup channel:
   identify (the serial must match the registry), read the clock, read the profile
   configuration, read the profile from where the store stops (bounded by the meter's
   memory) in day-sized chunks, read the cumulative registers; close.
2. only if the offset passes the correction target (a fraction of the frontier's limit,
   default a third, so the clock never reaches the limit between two hourly reads): a
   level-2 session that sets the clock, re-reads it, and closes. The correction is done only
   when the re-read offset is inside the target; anything else is a failed correction (an
   alarm). A refused level-2 secret leaves the drift, raises an alarm, and does not undo
   what step 1 read. ``clock_block`` (the CGM's own clock not on official time, or no
   accountable user for automatic level-2 access) refuses the set with its reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cgm import metrics
from cgm.collection.columns import ProfileColumns
from cgm.registry import MeterConfig
from drivers.base import (
    AccessLevel,
    AuthenticationFailed,
    ClockReading,
    ConnectionFailed,
    Credentials,
    Driver,
    DriverError,
    MeterIdentity,
    MeterSession,
    MeterTimeout,
    NotSupported,
    ProfileConfig,
    ProfileEntry,
    RegisterValue,
    SessionEvent,
    utcnow,
)

log = logging.getLogger(__name__)

# Art. 15 of the Código: hourly registration at least, memory of at least 30 days.
MAX_CAPTURE_PERIOD = timedelta(minutes=60)
MIN_MEMORY = timedelta(days=30)
PROFILE_CHUNK = timedelta(days=1)


@dataclass(frozen=True)
class SessionPolicy:
    timeout: float = 10.0  # per call
    attempts: int = 2  # per channel, for timeouts and connection failures
    backoff: float = 0.5  # seconds, doubled per attempt
    max_backoff: float = 10.0


@dataclass(frozen=True)
class ClockCorrection:
    before: ClockReading
    after: ClockReading | None
    set_to: datetime | None
    error: str | None = None  # reason when the correction could not be made or failed
    attempted: bool = True  # False: not tried (level 2 refused too often: lockout guard)
    target_s: float = 0.0  # the re-read offset must be inside this for the set to count
    blocked: bool = False  # refused before any access: no official time / no accountable
    accessed: bool = False  # a level-2 session was opened (an access to log, ok or not)

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and self.after is not None
            and abs(self.after.offset) <= self.target_s
        )


@dataclass
class MeterOutcome:
    target: MeterConfig
    started_at: datetime
    finished_at: datetime | None = None
    result: str = "ok"  # ok | partial | a DriverError reason | identity
    error: str | None = None
    channel_used: str | None = None  # primary | backup
    attempts: int = 0
    identity: MeterIdentity | None = None
    clock: ClockReading | None = None
    correction: ClockCorrection | None = None
    profile_config: ProfileConfig | None = None
    has_profile: bool = True
    config_violations: list[str] = field(default_factory=list)
    entries: list[ProfileEntry] = field(default_factory=list)
    # With ``interrogate(columnar=True)``: the hourly entries, as columns (``entries`` then
    # holds only the others).
    columns: ProfileColumns | None = None
    registers: list[RegisterValue] = field(default_factory=list)
    events: list[SessionEvent] = field(default_factory=list)  # what the driver handled
    read_from: datetime | None = None
    read_to: datetime | None = None
    duration_s: float = 0.0
    auth_refused: list[int] = field(default_factory=list)  # access levels the meter refused
    level2_locked: bool = False  # level 2 not tried: refused too often with this secret

    @property
    def succeeded(self) -> bool:
        return self.result in ("ok", "partial")

    @property
    def entry_count(self) -> int:
        """Profile entries the meter gave, in ``entries`` or ``columns``."""
        return len(self.entries) + (self.columns.entries if self.columns else 0)


class IdentityMismatch(DriverError):
    """The meter at the endpoint is not the one registered (replaced, or miswired)."""

    reason = "identity"


class MissingCredentials(DriverError):
    reason = "auth"


class UnreadableCredentials(DriverError):
    """A stored credential the session needs cannot be decrypted with the current key."""

    reason = "credential"


def unreadable_reason(target: MeterConfig, names: tuple[str, ...]) -> str | None:
    """Why ``target`` cannot be reached with its stored ``names`` credentials, or None."""
    bad = [n for n in names if n in target.unreadable]
    if not bad:
        return None
    return (
        f"stored {' and '.join(bad)} credential of meter {target.serial} cannot be decrypted "
        "with the current key (was secret_key changed or data_dir/secret.key replaced?); "
        "re-import the meter's credentials"
    )


_RETRYABLE = (MeterTimeout, ConnectionFailed)


async def _open(
    driver: Driver,
    target: MeterConfig,
    credentials: Credentials,
    policy: SessionPolicy,
    outcome: MeterOutcome,
) -> MeterSession:
    """Connect on the primary channel, retrying with backoff, then on the backup channel.

    Authentication failures are not retried: repeating a wrong secret can lock a meter.
    """
    last: DriverError | None = None
    params = dict(target.params)
    if target.protocol == "mqtt":
        params.setdefault("serial", target.serial)  # the meter's topic id defaults to its serial
        params["broker_login"] = mqtt_login(target)
    for name, endpoint in zip(("primary", "backup"), target.endpoints, strict=False):
        # A plain loop, not tenacity: its per-call machinery (inspecting the callables,
        # building retry state) cost more CPU than a steady-state session's connect.
        for attempt in range(1, policy.attempts + 1):
            outcome.attempts += 1
            try:
                session = await driver.connect(
                    endpoint, credentials, params, timeout=policy.timeout
                )
            except _RETRYABLE as exc:
                last = exc
                if attempt < policy.attempts:
                    await asyncio.sleep(
                        min(policy.backoff * 2 ** (attempt - 1), policy.max_backoff)
                    )
                continue
            outcome.channel_used = name
            return session
        log.info("%s: %s channel %s failed: %s", target.serial, name, endpoint, last)
    assert last is not None, "a meter target has at least one endpoint"
    raise last


def mqtt_login(target: MeterConfig) -> Any:
    """The driver's broker login for an MQTT meter: the registry's encrypted account (or
    client key) and the meter's TLS params. Imported here so that a fleet without MQTT
    meters never loads the MQTT client."""
    from drivers.mqtt import BrokerLogin

    account = target.broker
    params = target.params
    return BrokerLogin(
        username=account.username if account else None,
        password=account.password if account else None,
        tls=bool(params.get("tls", False)),
        ca_file=params.get("ca_file"),
        client_cert=params.get("client_cert"),
        client_key=account.client_key if account else None,
    )


def _check_config(config: ProfileConfig) -> list[str]:
    problems = []
    if config.capture_period > MAX_CAPTURE_PERIOD:
        problems.append(f"capture period {config.capture_period} exceeds 60 minutes (art. 15)")
    if config.memory_span < MIN_MEMORY:
        days = config.memory_span.total_seconds() / 86400
        problems.append(f"profile memory holds {days:.1f} days, less than 30 (art. 15)")
    return problems


async def _read_profile(
    session: MeterSession,
    start: datetime,
    end: datetime,
    outcome: MeterOutcome,
) -> None:
    """Read [start, end) in day-sized chunks, keeping what arrived if a later chunk fails
    (each chunk taken into ``outcome.columns`` as it arrives, when there are columns)."""
    cursor = start
    columns = outcome.columns
    while cursor < end:
        stop = min(cursor + PROFILE_CHUNK, end)
        chunk = await session.read_profile(cursor, stop)
        outcome.entries.extend(columns.add(chunk) if columns is not None else chunk)
        outcome.read_to = stop
        cursor = stop


async def interrogate(
    driver: Driver,
    target: MeterConfig,
    *,
    since: datetime | None,
    policy: SessionPolicy | None = None,
    now: datetime | None = None,
    level2_allowed: bool = True,
    clock_target_fraction: float = 1 / 3,
    clock_block: str | None = None,
    columnar: bool = False,
) -> MeterOutcome:
    """Run the full session sequence for one meter; never raises for a meter's failure.

    ``level2_allowed=False`` (the meter refused the level-2 secret too often lately) skips
    the clock correction rather than present a wrong password once more. The clock is
    corrected past ``clock_target_fraction`` of its limit; ``clock_block`` is a reason the
    clock must not be set now (it then raises an alarm instead). ``columnar`` keeps the
    hourly profile entries as :class:`ProfileColumns` (what the collector stores from)."""
    policy = policy or SessionPolicy()
    now = now or utcnow()
    outcome = MeterOutcome(
        target=target,
        started_at=utcnow(),
        level2_locked=not level2_allowed,
        columns=ProfileColumns() if columnar else None,
    )
    t0 = time.perf_counter()
    try:
        await _read_session(driver, target, since, now, policy, outcome)
    except DriverError as exc:
        # What was read before the failure stays in the outcome; the engine stores it.
        outcome.result = "partial" if outcome.entry_count or outcome.registers else exc.reason
        outcome.error = f"{exc.reason}: {exc}"
    except Exception as exc:  # noqa: BLE001 - e.g. bad protocol params: a recorded failure
        log.exception("%s: unexpected error", target.serial)
        outcome.result = "error"
        outcome.error = f"{type(exc).__name__}: {exc}"
    goal = correction_target(target.clock_limit_s, clock_target_fraction)
    if outcome.clock is not None and abs(outcome.clock.offset) > goal:
        if clock_block is not None:
            outcome.correction = ClockCorrection(
                outcome.clock, None, None, clock_block, target_s=goal, blocked=True
            )
        else:
            outcome.correction = await _correct_clock(driver, target, policy, outcome, goal)
    outcome.finished_at = utcnow()
    outcome.duration_s = time.perf_counter() - t0
    return outcome


async def _read_session(
    driver: Driver,
    target: MeterConfig,
    since: datetime | None,
    now: datetime,
    policy: SessionPolicy,
    outcome: MeterOutcome,
) -> None:
    # Reading is level 1 only: the level-2 secret is never used to read (art. 17), so a
    # meter without a level-1 secret is not read, and its registry violation says why.
    needed = ("level 1", "broker") if target.protocol == "mqtt" else ("level 1",)
    if (why := unreadable_reason(target, needed)) is not None:
        raise UnreadableCredentials(why)
    credentials = target.credential(AccessLevel.READ)
    if credentials is None:
        raise MissingCredentials(f"no level-1 secret registered for meter {target.serial}")
    try:
        session = await _open(driver, target, credentials, policy, outcome)
    except AuthenticationFailed:
        outcome.auth_refused.append(int(credentials.level))
        raise
    try:
        async with session:
            await _read_steps(session, target, since, now, outcome)
    finally:
        outcome.events.extend(session.events)
        for event in session.events:
            metrics.DRIVER_EVENTS.labels(target.protocol, event.kind).inc()


async def _read_steps(
    session: MeterSession,
    target: MeterConfig,
    since: datetime | None,
    now: datetime,
    outcome: MeterOutcome,
) -> None:
    outcome.identity = await session.identify()
    # The driver returns the value of the object the meter answers to (DLMS: the serial
    # number object, else the logical device name, or the one the meter's params name).
    if outcome.identity.serial != target.serial:
        source = getattr(session, "identity_source", None)
        source = f" ({source})" if source else ""
        raise IdentityMismatch(
            f"meter at {session.endpoint} reports serial {outcome.identity.serial!r}{source}, "
            f"registry says {target.serial!r}"
        )
    try:
        outcome.clock = await session.read_clock()
    except NotSupported:
        # Meters without a clock over their protocol (most Modbus meters): registers are
        # stamped with the CGM's clock and differenced into hours; nothing to correct.
        outcome.clock = None
    end = now.replace(minute=0, second=0, microsecond=0)
    try:
        config = await session.read_profile_config()
    except NotSupported:
        outcome.has_profile = False
    else:
        outcome.profile_config = config
        outcome.config_violations = _check_config(config)
        oldest = end - config.memory_span
        start = oldest if since is None else max(since, oldest)
        outcome.read_from = start
        if start < end:
            await _read_profile(session, start, end, outcome)
    outcome.registers = await session.read_registers()


def correction_target(limit_s: float, fraction: float) -> float:
    """Offset past which a clock is corrected, and inside which a correction must leave it:
    well inside the limit, so that drift between two reads never reaches the limit."""
    if not 0 < fraction <= 1:
        raise ValueError("the clock correction target is a fraction of the limit in (0, 1]")
    return limit_s * fraction


async def _correct_clock(
    driver: Driver,
    target: MeterConfig,
    policy: SessionPolicy,
    outcome: MeterOutcome,
    goal: float,
) -> ClockCorrection:
    """Set the clock with level-2 credentials and re-read it: done only inside ``goal``."""
    before = outcome.clock
    assert before is not None
    credentials = target.credential(AccessLevel.CONFIGURE)
    if credentials is None:
        why = unreadable_reason(target, ("level 2",)) or "no level-2 credentials registered"
        return ClockCorrection(before, None, None, why, target_s=goal)
    if outcome.level2_locked:
        return ClockCorrection(
            before,
            None,
            None,
            "not attempted: the level-2 secret was refused too often in 24 h",
            attempted=False,
            target_s=goal,
        )
    try:
        session = await _open(driver, target, credentials, policy, outcome)
    except AuthenticationFailed as exc:
        outcome.auth_refused.append(int(AccessLevel.CONFIGURE))
        return ClockCorrection(before, None, None, f"auth: {exc}", target_s=goal)
    except DriverError as exc:
        return ClockCorrection(before, None, None, f"{exc.reason}: {exc}", target_s=goal)
    sent: datetime | None = None
    async with session:
        try:
            probe = await session.read_clock()
            # Aim at the CGM's time when the request arrives: half a round trip from now.
            set_to = utcnow() + timedelta(seconds=probe.round_trip / 2)
            await session.set_clock(set_to)
            sent = set_to
            after = await session.read_clock()
        except DriverError as exc:
            return ClockCorrection(
                before, None, sent, f"{exc.reason}: {exc}", target_s=goal, accessed=True
            )
    error = None
    if abs(after.offset) > goal:
        error = f"offset after setting {after.offset:+.3f} s is outside the target {goal:g} s"
    return ClockCorrection(before, after, sent, error, target_s=goal, accessed=True)
