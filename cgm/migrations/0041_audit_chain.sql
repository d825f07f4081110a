-- Tamper evidence: every audit row and every ingest batch carries a SHA-256 hash chained to
-- the previous one of its table (art. 17: integrity of the readings database).
--
--   hash = sha256(prev_hash || payload), payload = a jsonb array of the row's fields as text
--
-- The chain is computed at COMMIT by a deferred constraint trigger under one advisory lock:
-- rows are chained in commit order, the lock is held only while the committing transaction
-- chains its own rows (never while it waits for a row lock, so it cannot deadlock with the
-- write path), and an ingest batch is hashed with its final counts. audit_chain keeps the
-- head (last seq and hash) of each chain, so a truncated or cut-off log is detected too.
-- `cgm audit verify` recomputes everything (cgm/audit.py holds the same payload
-- expressions; they must stay identical).

CREATE TABLE audit_chain (
    chain  text PRIMARY KEY CHECK (chain IN ('audit_log', 'ingest_batch')),
    seq    bigint NOT NULL,
    hash   bytea NOT NULL
);
INSERT INTO audit_chain VALUES
    ('audit_log', 0, decode(repeat('00', 32), 'hex')),
    ('ingest_batch', 0, decode(repeat('00', 32), 'hex'));

ALTER TABLE audit_log
    ADD COLUMN chain_seq bigint UNIQUE,
    ADD COLUMN prev_hash bytea,
    ADD COLUMN hash bytea;
ALTER TABLE ingest_batch
    ADD COLUMN chain_seq bigint UNIQUE,
    ADD COLUMN prev_hash bytea,
    ADD COLUMN hash bytea;

CREATE FUNCTION chain_payload(tbl text, id bigint, seq bigint) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    payload text;
BEGIN
    IF tbl = 'audit_log' THEN
        SELECT pg_catalog.jsonb_build_array(
                   seq, t.id, (extract(epoch FROM t.at) * 1000000)::bigint, t.table_name,
                   t.op, t.old_row, t.new_row, t.db_user, t.actor, t.reason)::text
          INTO payload FROM audit_log t WHERE t.id = chain_payload.id;
    ELSE
        SELECT pg_catalog.jsonb_build_array(
                   seq, t.id, (extract(epoch FROM t.at) * 1000000)::bigint, t.db_user,
                   t.actor, t.source, t.target, t.received, t.inserted, t.unchanged,
                   t.superseded, t.kept_manual)::text
          INTO payload FROM ingest_batch t WHERE t.id = chain_payload.id;
    END IF;
    RETURN payload;
END;
$$;

-- Chains one row (the deferred trigger, and the backfill below).
CREATE FUNCTION chain_link(tbl text, row_id bigint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    last_seq bigint;
    last_hash bytea;
    new_hash bytea;
BEGIN
    PERFORM pg_advisory_xact_lock(4851574543439840580);  -- one lock for both chains
    SELECT seq, hash INTO STRICT last_seq, last_hash FROM audit_chain WHERE chain = tbl;
    new_hash := sha256(last_hash
                       || convert_to(chain_payload(tbl, row_id, last_seq + 1), 'UTF8'));
    IF tbl = 'audit_log' THEN
        UPDATE audit_log SET chain_seq = last_seq + 1, prev_hash = last_hash, hash = new_hash
        WHERE id = row_id AND hash IS NULL;
    ELSE
        UPDATE ingest_batch SET chain_seq = last_seq + 1, prev_hash = last_hash,
                                hash = new_hash
        WHERE id = row_id AND hash IS NULL;
    END IF;
    IF FOUND THEN
        UPDATE audit_chain SET seq = last_seq + 1, hash = new_hash WHERE chain = tbl;
    END IF;
END;
$$;

CREATE FUNCTION chain_row() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM chain_link(TG_TABLE_NAME, NEW.id);
    RETURN NULL;
END;
$$;

CREATE CONSTRAINT TRIGGER audit_log_chain AFTER INSERT ON audit_log
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION chain_row();
CREATE CONSTRAINT TRIGGER ingest_batch_chain AFTER INSERT ON ingest_batch
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION chain_row();

-- Append-only, except the one update that fills a row's chain columns; an ingest batch's
-- counts may change until it is chained (at the commit of the transaction that wrote it).
CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.hash IS NULL AND NEW.hash IS NOT NULL
       AND (to_jsonb(OLD) - ARRAY['chain_seq', 'prev_hash', 'hash'])
           = (to_jsonb(NEW) - ARRAY['chain_seq', 'prev_hash', 'hash']) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$;

CREATE FUNCTION ingest_batch_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.hash IS NULL AND OLD.id = NEW.id THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'ingest_batch is append-only once committed';
END;
$$;
CREATE TRIGGER ingest_batch_no_change BEFORE UPDATE OR DELETE ON ingest_batch
    FOR EACH ROW EXECUTE FUNCTION ingest_batch_append_only();

CREATE FUNCTION chained_no_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only (TRUNCATE refused)', TG_TABLE_NAME;
END;
$$;
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION chained_no_truncate();
CREATE TRIGGER ingest_batch_no_truncate BEFORE TRUNCATE ON ingest_batch
    FOR EACH STATEMENT EXECUTE FUNCTION chained_no_truncate();
CREATE TRIGGER audit_chain_no_truncate BEFORE TRUNCATE ON audit_chain
    FOR EACH STATEMENT EXECUTE FUNCTION chained_no_truncate();

-- Rows written before this migration are chained now, in id order.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT id FROM audit_log WHERE hash IS NULL ORDER BY id LOOP
        PERFORM chain_link('audit_log', r.id);
    END LOOP;
    FOR r IN SELECT id FROM ingest_batch WHERE hash IS NULL ORDER BY id LOOP
        PERFORM chain_link('ingest_batch', r.id);
    END LOOP;
END;
$$;
