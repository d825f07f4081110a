-- Audit rows name the logical table, also on TimescaleDB.
--
-- Row triggers on a hypertable fire on its chunks, where TG_TABLE_NAME is the chunk
-- (_hyper_1_3_chunk), so the version views missed every superseded version there. The
-- audited tables now pass their own name as the trigger argument, which TimescaleDB copies
-- to every chunk's trigger; tables without an argument keep TG_TABLE_NAME.

CREATE OR REPLACE FUNCTION audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit_log (table_name, op, old_row, new_row, actor, reason)
    VALUES (
        coalesce(TG_ARGV[0], TG_TABLE_NAME),
        left(TG_OP, 1),
        CASE WHEN TG_OP IN ('UPDATE', 'DELETE') THEN to_jsonb(OLD) END,
        CASE WHEN TG_OP IN ('UPDATE', 'INSERT') THEN to_jsonb(NEW) END,
        nullif(current_setting('cgm.actor', true), ''),
        nullif(current_setting('cgm.reason', true), '')
    );
    RETURN NULL;
END;
$$;

DROP TRIGGER reading_audit ON reading;
CREATE TRIGGER reading_audit AFTER UPDATE OR DELETE ON reading
    FOR EACH ROW EXECUTE FUNCTION audit_row('reading');
DROP TRIGGER settled_reading_audit ON settled_reading;
CREATE TRIGGER settled_reading_audit AFTER UPDATE OR DELETE ON settled_reading
    FOR EACH ROW EXECUTE FUNCTION audit_row('settled_reading');

-- Rows written before this migration on TimescaleDB carry a chunk name; the row image
-- says which table they came from (only readings have meter_id, only settled values
-- settled_at), so the views find them too. The audit log itself is never rewritten.
CREATE OR REPLACE VIEW reading_version AS
SELECT meter_id, channel, interval_start, version, value, quality, collected_at,
       NULL::timestamptz AS superseded_at, NULL::text AS superseded_by
FROM reading
UNION ALL
SELECT (old_row ->> 'meter_id')::bigint, (old_row ->> 'channel')::smallint,
       (old_row ->> 'interval_start')::timestamptz, (old_row ->> 'version')::integer,
       (old_row ->> 'value')::double precision, (old_row ->> 'quality')::integer,
       (old_row ->> 'collected_at')::timestamptz, at, coalesce(actor, db_user)
FROM audit_log
WHERE op IN ('U', 'D')
  AND (table_name = 'reading'
       OR (table_name ~ '^_hyper_[0-9]+_[0-9]+_chunk$' AND old_row ? 'meter_id'));

CREATE OR REPLACE VIEW settled_version AS
SELECT frontier_id, channel, interval_start, version, value, source, method, flags, detail,
       settled_at, actor, reason, NULL::timestamptz AS superseded_at
FROM settled_reading
UNION ALL
SELECT (old_row ->> 'frontier_id')::bigint, (old_row ->> 'channel')::smallint,
       (old_row ->> 'interval_start')::timestamptz, (old_row ->> 'version')::integer,
       (old_row ->> 'value')::double precision, old_row ->> 'source', old_row ->> 'method',
       (old_row ->> 'flags')::integer, old_row -> 'detail',
       (old_row ->> 'settled_at')::timestamptz, old_row ->> 'actor', old_row ->> 'reason', at
FROM audit_log
WHERE op IN ('U', 'D')
  AND (table_name = 'settled_reading'
       OR (table_name ~ '^_hyper_[0-9]+_[0-9]+_chunk$' AND old_row ? 'settled_at'));
