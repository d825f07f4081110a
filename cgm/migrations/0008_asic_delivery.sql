-- ASIC reporting (Código de Medida art. 37, Anexo 8): what was built, sent and answered.
--
-- A document is one meter's readings of one local day, exactly as sent (JSON) with the
-- SHA-256 of its bytes; the hash makes "never send the same version twice" a lookup. A
-- submission is one zip posted to the ASIC and the message id it answered with. Every HTTP
-- request and response is kept in asic_exchange with the hash of its payload.

CREATE TABLE asic_submission (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    zip_name      text NOT NULL,
    payload_hash  text NOT NULL,               -- sha256 of the zip bytes
    size_bytes    integer NOT NULL,
    documents     integer NOT NULL,
    transport     text NOT NULL,
    message_id    text,                        -- the ASIC's answer to the upload
    -- pending: not accepted yet (transport failure: retried on the next run);
    -- waiting/success/success_warning/error: the ASIC's processing state.
    state         text NOT NULL DEFAULT 'pending'
                  CHECK (state IN ('pending', 'waiting', 'success', 'success_warning',
                                   'error', 'failed')),
    detail        jsonb NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    sent_at       timestamptz,
    final_at      timestamptz,
    last_polled   timestamptz
);
CREATE UNIQUE INDEX asic_submission_message ON asic_submission (message_id)
    WHERE message_id IS NOT NULL;
CREATE INDEX asic_submission_open ON asic_submission (state) WHERE state IN ('pending', 'waiting');

CREATE TABLE asic_document (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    frontier_id    bigint NOT NULL REFERENCES frontier (id) ON DELETE RESTRICT,
    meter_id       bigint NOT NULL REFERENCES meter (id) ON DELETE RESTRICT,
    role           text NOT NULL CHECK (role IN ('principal', 'backup')),
    day            date NOT NULL,              -- Colombian local day of the readings
    file_name      text NOT NULL,              -- {meter}_{yyyyMMdd}.json
    kind           text NOT NULL CHECK (kind IN ('original', 'correction')),
    content        jsonb NOT NULL,             -- the document exactly as sent
    content_hash   text NOT NULL,              -- sha256 of the sent bytes
    settled_version integer NOT NULL,          -- highest settled version in the day
    estimated      jsonb NOT NULL DEFAULT '[]', -- [{channel, periods, methods}]
    -- pending: built, not accepted by an upload yet; late: a correction outside the
    -- correction window (kept, not sent); superseded: a newer version was built before
    -- this one was accepted; the rest mirror the ASIC's answer for the file.
    state          text NOT NULL DEFAULT 'pending'
                   CHECK (state IN ('pending', 'waiting', 'success', 'success_warning',
                                    'error', 'late', 'superseded')),
    detail         jsonb NOT NULL DEFAULT '{}',
    submission_id  bigint REFERENCES asic_submission (id),
    created_at     timestamptz NOT NULL DEFAULT now(),
    sent_at        timestamptz,
    final_at       timestamptz,
    UNIQUE (meter_id, day, content_hash)
);
CREATE INDEX asic_document_day ON asic_document (day, frontier_id);
CREATE INDEX asic_document_submission ON asic_document (submission_id);

-- Every request to and response from the ASIC. Secrets never reach this table: token
-- requests are hashed without the secret and the token in the answer is redacted.
CREATE TABLE asic_exchange (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    submission_id  bigint REFERENCES asic_submission (id),
    at             timestamptz NOT NULL DEFAULT now(),
    operation      text NOT NULL CHECK (operation IN ('token', 'upload', 'status')),
    method         text NOT NULL,
    url            text NOT NULL,
    request_hash   text NOT NULL,
    status_code    integer,                    -- NULL: no answer (transport error)
    response       text,                       -- body, truncated, secrets redacted
    response_hash  text,
    error          text,
    seconds        double precision NOT NULL
);
CREATE INDEX asic_exchange_submission ON asic_exchange (submission_id, at);
