-- A plain measured settled value's provenance in typed columns instead of per-row JSON.
--
-- A fleet's first settle of a day is ~1 M plain measured values (a principal's or backup's
-- reading as it is). Their provenance (meter, reading version, secondary value, factor) was
-- a jsonb built by the server for every row: a third of the write's server time and of the
-- table's size (benchmarks/README.md, VEE). As four nullable columns the rows can go to
-- the table by binary COPY as they are, and are a third smaller.
--
-- Rows written before keep their provenance in detail; settled_detail() gives a row's
-- provenance the same way for both, and is what readers show as "detail". The columns are
-- NULL on every other row (estimates, flagged or manual values keep a free-form detail).
ALTER TABLE settled_reading
    ADD COLUMN meter_id bigint,
    ADD COLUMN reading_version integer,
    ADD COLUMN secondary double precision,
    ADD COLUMN factor double precision;

CREATE FUNCTION settled_detail(detail jsonb, meter_id bigint, reading_version integer,
                               secondary double precision, factor double precision)
RETURNS jsonb LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN meter_id IS NULL THEN detail
                ELSE detail || jsonb_build_object('meter_id', meter_id,
                    'reading_version', reading_version, 'secondary', secondary,
                    'factor', factor) END
$$;

CREATE OR REPLACE VIEW settled_version AS
SELECT frontier_id, channel, interval_start, version, value, source, method, flags,
       settled_detail(detail, meter_id, reading_version, secondary, factor) AS detail,
       settled_at, actor, reason, NULL::timestamptz AS superseded_at
FROM settled_reading
UNION ALL
SELECT (old_row ->> 'frontier_id')::bigint, (old_row ->> 'channel')::smallint,
       (old_row ->> 'interval_start')::timestamptz, (old_row ->> 'version')::integer,
       (old_row ->> 'value')::double precision, old_row ->> 'source', old_row ->> 'method',
       (old_row ->> 'flags')::integer,
       settled_detail(old_row -> 'detail', (old_row ->> 'meter_id')::bigint,
                      (old_row ->> 'reading_version')::integer,
                      (old_row ->> 'secondary')::double precision,
                      (old_row ->> 'factor')::double precision),
       (old_row ->> 'settled_at')::timestamptz, old_row ->> 'actor', old_row ->> 'reason', at
FROM audit_log
WHERE op IN ('U', 'D')
  AND (table_name = 'settled_reading'
       OR (table_name ~ '^_hyper_[0-9]+_[0-9]+_chunk$' AND old_row ? 'settled_at'));
