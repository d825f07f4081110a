-- The chain's cost stays linear in the rows a transaction writes. 0041 updated the head
-- row (audit_chain) once per linked row, and PostgreSQL must walk every version of a row
-- updated many times in one transaction: a batch superseding 10,000 readings spent most of
-- its time there. Now each link continues from the last linked row of its table (an index
-- probe on chain_seq) or from the head, whichever is further (so rows cut off the tail
-- stay a visible gap), and the head is written once, by the transaction's last link.

CREATE INDEX audit_log_unchained ON audit_log (id) WHERE hash IS NULL;
CREATE INDEX ingest_batch_unchained ON ingest_batch (id) WHERE hash IS NULL;

CREATE OR REPLACE FUNCTION chain_link(tbl text, row_id bigint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    last_seq bigint;
    last_hash bytea;
    row_seq bigint;
    row_hash bytea;
    new_hash bytea;
    linked boolean;
    more boolean;
BEGIN
    PERFORM pg_advisory_xact_lock(4851574543439840580);  -- one lock for both chains
    SELECT seq, hash INTO STRICT last_seq, last_hash FROM audit_chain WHERE chain = tbl;
    IF tbl = 'audit_log' THEN
        SELECT chain_seq, hash INTO row_seq, row_hash FROM audit_log
        WHERE chain_seq IS NOT NULL ORDER BY chain_seq DESC LIMIT 1;
    ELSE
        SELECT chain_seq, hash INTO row_seq, row_hash FROM ingest_batch
        WHERE chain_seq IS NOT NULL ORDER BY chain_seq DESC LIMIT 1;
    END IF;
    IF row_seq > last_seq THEN  -- rows this transaction linked already
        last_seq := row_seq;
        last_hash := row_hash;
    END IF;
    new_hash := sha256(last_hash
                       || convert_to(chain_payload(tbl, row_id, last_seq + 1), 'UTF8'));
    IF tbl = 'audit_log' THEN
        UPDATE audit_log SET chain_seq = last_seq + 1, prev_hash = last_hash, hash = new_hash
        WHERE id = row_id AND hash IS NULL;
        linked := FOUND;
        more := EXISTS (SELECT 1 FROM audit_log WHERE hash IS NULL AND id > row_id);
    ELSE
        UPDATE ingest_batch SET chain_seq = last_seq + 1, prev_hash = last_hash,
                                hash = new_hash
        WHERE id = row_id AND hash IS NULL;
        linked := FOUND;
        more := EXISTS (SELECT 1 FROM ingest_batch WHERE hash IS NULL AND id > row_id);
    END IF;
    IF linked AND NOT more THEN
        UPDATE audit_chain SET seq = last_seq + 1, hash = new_hash WHERE chain = tbl;
    END IF;
END;
$$;
