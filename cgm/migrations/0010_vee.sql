-- VEE (validation, critique, estimation): active-power samples from another source.
--
-- Art. 38 (a): while a meter is failed, the first estimation method is the integration of
-- active power measured by another system covering the frontier (e.g. the operator's
-- SCADA). Samples are instantaneous kW in primary units, at whatever rate that system
-- keeps; VEE integrates them over each missing hour. Imported in bulk (cgm vee
-- import-power), keyed by the sample time so a re-import is idempotent.
CREATE TABLE power_sample (
    frontier_id  bigint NOT NULL REFERENCES frontier (id) ON DELETE CASCADE,
    channel      smallint NOT NULL REFERENCES channel (id),
    measured_at  timestamptz NOT NULL,
    kw           double precision NOT NULL CHECK (kw >= 0),
    source       text NOT NULL DEFAULT 'scada',
    imported_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (frontier_id, channel, measured_at)
);
CREATE TRIGGER power_sample_audit AFTER UPDATE OR DELETE ON power_sample
    FOR EACH ROW EXECUTE FUNCTION audit_row();

-- The prolonged-estimation alarm looks for the last non-estimated value of a channel.
CREATE INDEX settled_reading_measured ON settled_reading (frontier_id, channel, interval_start)
    WHERE source <> 'estimate';
