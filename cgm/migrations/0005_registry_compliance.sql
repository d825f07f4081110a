-- Registry additions: the channels each meter is expected to deliver, instrument-transformer
-- accuracy classes (Table 2 also rates CTs and VTs), and the Código de Medida violations
-- found when a frontier was last imported.

ALTER TABLE meter
    ADD COLUMN channels text[] NOT NULL
        DEFAULT '{active_import,active_export,reactive_import,reactive_export}',
    ADD COLUMN ct_accuracy text,
    ADD COLUMN vt_accuracy text;

-- A non-compliant frontier is still registered (so an operator can see and fix it); what
-- it violates is listed here. Rebuilt per frontier on every import: a rule that no longer
-- fires is removed, one that keeps firing keeps its first detection time.
CREATE TABLE frontier_violation (
    frontier_id  bigint NOT NULL REFERENCES frontier (id) ON DELETE CASCADE,
    rule         text NOT NULL,
    subject      text NOT NULL DEFAULT '',   -- meter serial, or '' for the frontier itself
    article      text NOT NULL,
    message      text NOT NULL,
    detected_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (frontier_id, rule, subject)
);
