-- Frontiers held for manual review are not reported to the ASIC until released. The current
-- holds are asic_hold; every hold and release, with who and why, is asic_hold_event.

CREATE TABLE asic_hold (
    frontier_id  bigint PRIMARY KEY REFERENCES frontier (id) ON DELETE CASCADE,
    reason       text NOT NULL CHECK (reason <> ''),
    actor        text NOT NULL,
    since        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE asic_hold_event (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    frontier_id  bigint NOT NULL REFERENCES frontier (id) ON DELETE CASCADE,
    action       text NOT NULL CHECK (action IN ('hold', 'release')),
    reason       text NOT NULL CHECK (reason <> ''),
    actor        text NOT NULL,
    at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX asic_hold_event_frontier ON asic_hold_event (frontier_id, at);
