-- Collection isolation: what one meter sent that was not stored, the meter's own sub-hourly
-- entries, and refused authentications (so a wrong secret is not retried into a lockout).

-- Counts per session: reading values stored (the same number the log line and the metric
-- give) and refused, with the reasons (reason -> count).
ALTER TABLE collection_session
    ADD COLUMN intervals_refused integer NOT NULL DEFAULT 0,
    ADD COLUMN refusals jsonb NOT NULL DEFAULT '{}';

-- Hourly values a meter gave that were refused before storage (malformed, misaligned,
-- implausible), kept as received with the reason, for review: refused, never lost.
CREATE TABLE reading_refused (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    meter_id        bigint NOT NULL REFERENCES meter (id) ON DELETE CASCADE,
    channel         smallint,
    interval_start  timestamptz,
    value           double precision,
    quality         integer,
    collected_at    timestamptz NOT NULL,
    cycle           timestamptz NOT NULL,
    reason          text NOT NULL
);
CREATE INDEX reading_refused_meter ON reading_refused (meter_id, collected_at DESC);

-- A sub-hourly meter's entries as it gave them (secondary units, its status byte), before
-- they were summed into hourly readings: the audit trail of each stored hour.
CREATE TABLE meter_entry (
    meter_id        bigint NOT NULL REFERENCES meter (id) ON DELETE CASCADE,
    channel         smallint NOT NULL CHECK (channel BETWEEN 1 AND 4),
    entry_start     timestamptz NOT NULL,
    period_s        integer NOT NULL CHECK (period_s > 0),
    value           double precision NOT NULL,
    status          integer NOT NULL DEFAULT 0,
    collected_at    timestamptz NOT NULL,
    PRIMARY KEY (meter_id, channel, entry_start)
);
CREATE TRIGGER meter_entry_audit AFTER UPDATE OR DELETE ON meter_entry
    FOR EACH ROW EXECUTE FUNCTION audit_row();

-- Every refused authentication, per meter and access level. Refusals with the secret that
-- is registered now count against the meter's daily budget (meters lock out after a few).
CREATE TABLE auth_refusal (
    meter_id    bigint NOT NULL REFERENCES meter (id) ON DELETE CASCADE,
    level       smallint NOT NULL CHECK (level IN (1, 2)),
    at          timestamptz NOT NULL DEFAULT now(),
    error       text
);
CREATE INDEX auth_refusal_meter ON auth_refusal (meter_id, level, at DESC);
