-- Retention leaves no silent holes: old chunks are dropped by cgm_retention, a job that
-- writes one audit_log row per chunk (op 'R': the range dropped, its row count, which
-- job and policy) in the same transaction as the drop_chunks, instead of TimescaleDB's
-- add_retention_policy, which logs nothing. Those rows are chained like every audit row.
-- Scheduled by cgm.migrate.apply_policies (TimescaleDB only; plain PostgreSQL never drops).

ALTER TABLE audit_log DROP CONSTRAINT audit_log_op_check,
    ADD CONSTRAINT audit_log_op_check CHECK (op IN ('I', 'U', 'D', 'R'));

CREATE PROCEDURE cgm_retention(job_id integer, config jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    tbl text := config ->> 'hypertable';
    drop_after interval := (config ->> 'drop_after')::interval;
    cutoff timestamptz;
    n bigint;
    r record;
BEGIN
    IF tbl NOT IN ('reading', 'settled_reading') THEN
        RAISE EXCEPTION 'cgm_retention: unknown hypertable %', tbl;
    END IF;
    -- Art. 18: readings are kept at least two years, whatever the job's config says.
    IF drop_after IS NULL OR now() - drop_after > now() - interval '2 years' THEN
        RAISE EXCEPTION 'cgm_retention: drop_after % is below the 2-year minimum', drop_after;
    END IF;
    cutoff := now() - drop_after;
    FOR r IN
        SELECT c.chunk_schema, c.chunk_name, c.range_start, c.range_end
        FROM timescaledb_information.chunks c
        WHERE c.hypertable_schema = current_schema() AND c.hypertable_name = tbl
          AND c.range_end <= cutoff
        ORDER BY c.range_start
    LOOP
        EXECUTE format('SELECT count(*) FROM %I.%I', r.chunk_schema, r.chunk_name) INTO n;
        INSERT INTO audit_log (table_name, op, old_row, db_user, actor, reason)
        VALUES (tbl, 'R',
                jsonb_build_object('range_start', r.range_start, 'range_end', r.range_end,
                                   'chunk', r.chunk_name, 'rows', n, 'cutoff', cutoff),
                session_user, 'retention',
                format('retention job %s: drop_after %s', job_id, drop_after));
    END LOOP;
    PERFORM drop_chunks(tbl::regclass, older_than => cutoff);
END;
$$;

-- What retention dropped, when and by which job.
CREATE VIEW retention_drop AS
SELECT at AS dropped_at, table_name,
       (old_row ->> 'range_start')::timestamptz AS range_start,
       (old_row ->> 'range_end')::timestamptz AS range_end,
       (old_row ->> 'rows')::bigint AS row_count, old_row ->> 'chunk' AS chunk,
       reason AS policy
FROM audit_log
WHERE op = 'R';
