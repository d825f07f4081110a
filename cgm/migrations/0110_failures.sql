-- Failures and thefts of a frontier's measuring elements (art. 36, Table 5).
--
-- One row per event, opened and later closed; the Table 5 count over the previous 12 months
-- is computed from these rows (cgm/failures.py), never stored, so it cannot drift.
-- ``operation_start`` gives the frontier's year of operation (Table 5 limits depend on it);
-- where it is null the frontier's registration date is used.
ALTER TABLE frontier ADD COLUMN IF NOT EXISTS operation_start date;

CREATE TABLE failure_event (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    frontier_id  bigint NOT NULL REFERENCES frontier (id) ON DELETE RESTRICT,
    element      text NOT NULL
                 CHECK (element IN ('principal', 'backup', 'ct', 'vt', 'communication')),
    kind         text NOT NULL CHECK (kind IN ('failure', 'theft')),
    started_at   timestamptz NOT NULL,
    ended_at     timestamptz,
    description  text NOT NULL CHECK (description <> ''),
    opened_by    text NOT NULL,
    closed_by    text,
    close_note   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (ended_at IS NULL OR ended_at >= started_at),
    CHECK ((ended_at IS NULL) = (closed_by IS NULL))
);
CREATE INDEX failure_event_frontier ON failure_event (frontier_id, started_at);
CREATE TRIGGER failure_event_audit AFTER UPDATE OR DELETE ON failure_event
    FOR EACH ROW EXECUTE FUNCTION audit_row();
