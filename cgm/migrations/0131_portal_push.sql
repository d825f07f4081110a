-- Pushes of validated daily consumption to the consumption portal, and what it answered.
-- One row per meter, day and version: the content exactly as sent, its SHA-256, and the
-- idempotency key the portal deduplicates on. A corrected day is a new version (new key).

CREATE TABLE portal_push (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    meter_id         bigint NOT NULL REFERENCES portal_meter (id),
    day              date NOT NULL,                -- Colombian local day
    version          integer NOT NULL CHECK (version >= 1),
    content          jsonb NOT NULL,
    content_hash     text NOT NULL,
    idempotency_key  text NOT NULL UNIQUE,
    -- pending: built, not delivered yet (retried on the next run); delivered: the portal
    -- answered 2xx; rejected: it answered 4xx (not retried); superseded: a newer version
    -- was built before this one was delivered.
    state            text NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'delivered', 'rejected', 'superseded')),
    attempts         integer NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    UNIQUE (meter_id, day, version)
);
CREATE INDEX portal_push_open ON portal_push (state) WHERE state = 'pending';

-- Every HTTP attempt: when, what status and body the portal answered, or the error.
CREATE TABLE portal_push_exchange (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    push_id      bigint NOT NULL REFERENCES portal_push (id),
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    url          text NOT NULL,
    http_status  integer,
    response     text,
    error        text,
    seconds      double precision NOT NULL
);
CREATE INDEX portal_push_exchange_push ON portal_push_exchange (push_id, at);
