-- requires: timescaledb
-- Retention of settled_day follows settled_reading's (migration 0200): when cgm_retention
-- drops settled_reading chunks, the settled_day rows of the dropped days go in the same
-- transaction, and the day cut by the last dropped chunk's end is rebuilt from what is left.
CREATE OR REPLACE PROCEDURE cgm_retention(job_id integer, config jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    tbl text := config ->> 'hypertable';
    drop_after interval := (config ->> 'drop_after')::interval;
    cutoff timestamptz;
    n bigint;
    boundary timestamptz;
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
        boundary := greatest(boundary, r.range_end);
    END LOOP;
    PERFORM drop_chunks(tbl::regclass, older_than => cutoff);
    -- settled_day follows: the days wholly dropped go, the day the boundary cuts keeps
    -- what remains of it.
    IF tbl = 'settled_reading' AND boundary IS NOT NULL THEN
        DELETE FROM settled_day WHERE day < settled_local_day(boundary);
        PERFORM settled_day_rebuild(settled_local_day(boundary), settled_local_day(boundary));
    END IF;
END;
$$;
