-- Collection: collectors sharing the fleet, per-cycle claims, the session log, register
-- snapshots and the frontier's hoja de vida (record of level-2 accesses and findings).

-- A collector process. Its heartbeat proves it alive; a stale one's claims are taken over.
CREATE TABLE collector (
    id          text PRIMARY KEY,
    host        text NOT NULL,
    pid         integer NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    heartbeat   timestamptz NOT NULL DEFAULT now()
);

-- Exactly one claim per meter and cycle (the cycle is the UTC hour it collects for).
CREATE TABLE collection_claim (
    meter_id    bigint NOT NULL REFERENCES meter (id) ON DELETE CASCADE,
    cycle       timestamptz NOT NULL,
    collector   text NOT NULL REFERENCES collector (id) ON DELETE CASCADE,
    claimed_at  timestamptz NOT NULL DEFAULT now(),
    done_at     timestamptz,
    attempts    integer NOT NULL DEFAULT 1,
    PRIMARY KEY (meter_id, cycle)
);
CREATE INDEX collection_claim_open ON collection_claim (cycle) WHERE done_at IS NULL;

-- One row per session with a meter: what happened, never a made-up value.
CREATE TABLE collection_session (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    meter_id        bigint NOT NULL REFERENCES meter (id) ON DELETE CASCADE,
    cycle           timestamptz NOT NULL,
    collector       text NOT NULL,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz NOT NULL,
    result          text NOT NULL,          -- ok | partial | timeout | auth | connection | ...
    error           text,
    channel_used    text,                   -- primary | backup
    attempts        integer NOT NULL,
    entries_read    integer NOT NULL DEFAULT 0,
    intervals_stored integer NOT NULL DEFAULT 0,
    clock_offset_s  double precision,
    clock_corrected boolean NOT NULL DEFAULT false,
    read_from       timestamptz,
    read_to         timestamptz
);
CREATE INDEX collection_session_meter ON collection_session (meter_id, started_at DESC);

-- Cumulative registers as read (secondary units), for meters without a profile and for the
-- VEE check of interval sums against register advance.
CREATE TABLE register_snapshot (
    meter_id    bigint NOT NULL REFERENCES meter (id) ON DELETE CASCADE,
    channel     smallint NOT NULL REFERENCES channel (id),
    read_at     timestamptz NOT NULL,
    value       double precision NOT NULL,
    PRIMARY KEY (meter_id, channel, read_at)
);

-- Hoja de vida: every level-2 access (art. 17: date and time, person, purpose, activities,
-- proof the meter was left working) and every finding recorded against a frontier.
CREATE TABLE frontier_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    frontier_id bigint NOT NULL REFERENCES frontier (id) ON DELETE CASCADE,
    meter_id    bigint REFERENCES meter (id) ON DELETE CASCADE,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    kind        text NOT NULL,              -- level2_access | config_violation | alarm | ...
    purpose     text NOT NULL,
    activities  jsonb NOT NULL DEFAULT '{}',
    proof       text
);
CREATE INDEX frontier_log_frontier ON frontier_log (frontier_id, at DESC);
CREATE TRIGGER frontier_log_audit AFTER UPDATE OR DELETE ON frontier_log
    FOR EACH ROW EXECUTE FUNCTION audit_row();

-- Per-meter health, so a meter that keeps failing is backed off across cycles and reported
-- rather than retried in a tight loop.
CREATE TABLE meter_health (
    meter_id              bigint PRIMARY KEY REFERENCES meter (id) ON DELETE CASCADE,
    consecutive_failures  integer NOT NULL DEFAULT 0,
    last_result           text,
    last_attempt          timestamptz,
    last_success          timestamptz,
    next_attempt_at       timestamptz,
    clock_offset_s        double precision,
    config_findings       text[] NOT NULL DEFAULT '{}'
);
