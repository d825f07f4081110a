-- Raw meter readings and settled hourly series.
--
-- Each table holds the current value per key and a version counter. A value that changes
-- is an UPDATE (version + 1) whose old image the audit trigger (0003) keeps, so every
-- version stays readable (views reading_version, settled_version) while current reads and
-- aggregates touch one row per interval. Unique keys include the time column, as
-- TimescaleDB hypertables require.

CREATE TABLE channel (
    id      smallint PRIMARY KEY,
    name    text NOT NULL UNIQUE,
    unit    text NOT NULL
);
INSERT INTO channel VALUES
    (1, 'active_import', 'kWh'),
    (2, 'active_export', 'kWh'),
    (3, 'reactive_import', 'kvarh'),
    (4, 'reactive_export', 'kvarh');

-- Raw readings as the meter gave them (secondary units; ratios are applied downstream).
CREATE TABLE reading (
    meter_id        bigint NOT NULL REFERENCES meter (id) ON DELETE RESTRICT,
    channel         smallint NOT NULL REFERENCES channel (id),
    interval_start  timestamptz NOT NULL,
    value           double precision NOT NULL,
    quality         integer NOT NULL DEFAULT 0,
    collected_at    timestamptz NOT NULL,
    version         integer NOT NULL DEFAULT 1,
    PRIMARY KEY (meter_id, channel, interval_start)
);
CREATE INDEX reading_interval_start ON reading (interval_start);

-- Every write batch, so that additions are logged without a row-level trigger on the hot
-- path (art. 17: the readings database logs additions, modifications and deletions).
CREATE TABLE ingest_batch (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    db_user     text NOT NULL DEFAULT current_user,
    actor       text,
    source      text NOT NULL,
    received    integer NOT NULL,
    inserted    integer NOT NULL,
    unchanged   integer NOT NULL,
    superseded  integer NOT NULL
);

-- One value per frontier, channel and hour, in primary units, from the principal, the
-- backup or an estimation method (VEE).
CREATE TABLE settled_reading (
    frontier_id     bigint NOT NULL REFERENCES frontier (id) ON DELETE RESTRICT,
    channel         smallint NOT NULL REFERENCES channel (id),
    interval_start  timestamptz NOT NULL,
    value           double precision NOT NULL,
    source          text NOT NULL CHECK (source IN ('principal', 'backup', 'estimate', 'manual')),
    method          text,
    flags           integer NOT NULL DEFAULT 0,
    detail          jsonb NOT NULL DEFAULT '{}',
    version         integer NOT NULL DEFAULT 1,
    settled_at      timestamptz NOT NULL DEFAULT now(),
    actor           text NOT NULL DEFAULT 'vee',
    reason          text,
    PRIMARY KEY (frontier_id, channel, interval_start),
    CHECK ((source = 'estimate') = (method IS NOT NULL))
);
CREATE INDEX settled_reading_interval_start ON settled_reading (interval_start);
