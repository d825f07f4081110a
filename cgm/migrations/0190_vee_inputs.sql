-- What a VEE run needs to know to skip a frontier-day whose inputs did not change.
--
-- settled_day_version: a change counter per frontier and Colombian local day, bumped by
-- cgm.storage.write_settled in the same statement that changes a settled value of that day
-- (a new value, a new version). A VEE run reads it for the days its typical curves come
-- from instead of re-reading their hourly values to see whether they moved.
CREATE TABLE settled_day_version (
    frontier_id  bigint NOT NULL REFERENCES frontier (id) ON DELETE CASCADE,
    day          date NOT NULL,
    version      bigint NOT NULL DEFAULT 1,
    PRIMARY KEY (frontier_id, day)
);

-- vee_day_inputs: the digest of every input of a frontier-day's last VEE run (readings,
-- register snapshots, clock corrections, power samples, registry, settings, hours due, the
-- versions of the history days), recorded when the run committed. A run whose digest is
-- equal has nothing to do for that frontier-day (cgm.vee.inputs.input_digests).
CREATE TABLE vee_day_inputs (
    frontier_id     bigint NOT NULL REFERENCES frontier (id) ON DELETE CASCADE,
    day             date NOT NULL,
    digest          bytea NOT NULL,
    uses_day        boolean NOT NULL,  -- the digest covers the day's own settled version
    ends_estimated  boolean NOT NULL,  -- a channel's last hour is an estimate (alarm check)
    settled_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (frontier_id, day)
);
