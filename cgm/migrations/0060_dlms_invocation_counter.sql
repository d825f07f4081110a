-- DLMS HLS-GMAC invocation counters. AES-GCM's nonce is system title || invocation counter,
-- so a counter must never be used twice under one key: not across sessions, restarts or
-- collectors. Each row is the next unused counter of one (client system title, key) pair
-- (the key appears only as a truncated hash). Collectors reserve ranges with one upsert
-- (cgm.security.counters), which PostgreSQL serialises on the row.
CREATE TABLE dlms_invocation_counter (
    counter_key  text PRIMARY KEY,
    next_value   bigint NOT NULL CHECK (next_value BETWEEN 1 AND 4294967296),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
