-- reading_day: one row per meter, channel and Colombian local day with the day's 24 current
-- readings as arrays (slot h = the hour starting at local h:00, NULL where nothing is
-- stored) and a change counter.
--
-- Why: a year of one frontier's readings is 70,080 rows of `reading`; aggregating them costs
-- PostgreSQL more than 100 ms per request (benchmarks/README.md, "HTTP API"). The same year is
-- 2,920 rows here. `version` is bumped whenever a reading of that day is inserted or changes
-- (value or quality): a reader that remembers it knows whether the day moved without reading
-- its hours (VEE's input digest).
--
-- Kept by cgm.storage.write_readings in the same transaction as `reading` (the only writer of
-- `reading`); rebuilt from `reading` by reading_day_rebuild (this backfill, and retention,
-- which drops whole chunks of `reading`). `off_grid`: the day has readings that do not start on
-- a whole hour (a sub-hourly series written as such); they have no slot, so whoever needs them
-- reads `reading`. Local days are UTC−5 without daylight saving (cgm/localtime.py).
CREATE TABLE reading_day (
    meter_id  bigint NOT NULL REFERENCES meter (id) ON DELETE CASCADE,
    channel   smallint NOT NULL CHECK (channel BETWEEN 1 AND 4),
    day       date NOT NULL,
    value     double precision[] NOT NULL CHECK (cardinality(value) = 24),
    quality   integer[] NOT NULL CHECK (cardinality(quality) = 24),
    off_grid  boolean NOT NULL DEFAULT false,
    version   bigint NOT NULL DEFAULT 1,
    PRIMARY KEY (meter_id, channel, day)
) WITH (fillfactor = 70);  -- room for the hourly in-place (HOT) updates of today's row

-- patch's non-NULL elements over old's (old NULL: patch). plpgsql: ~1.5 µs per call here,
-- a third of the SQL form with unnest … WITH ORDINALITY.
CREATE FUNCTION reading_day_merge(old anyarray, patch anyarray) RETURNS anyarray
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF old IS NULL THEN
        RETURN patch;
    END IF;
    FOR i IN 1 .. cardinality(patch) LOOP
        IF patch[i] IS NOT NULL THEN
            old[i] := patch[i];
        END IF;
    END LOOP;
    RETURN old;
END;
$$;

-- 24 slots with vals[k] at slot hours[k] + 1 (hours 0..23; others ignored), NULL elsewhere.
CREATE FUNCTION reading_day_slots(hours integer[], vals double precision[])
RETURNS double precision[] LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    out double precision[] := array_fill(NULL::double precision, ARRAY[24]);
BEGIN
    FOR k IN 1 .. cardinality(hours) LOOP
        IF hours[k] BETWEEN 0 AND 23 THEN
            out[hours[k] + 1] := vals[k];
        END IF;
    END LOOP;
    RETURN out;
END;
$$;

CREATE FUNCTION reading_day_slots(hours integer[], vals integer[])
RETURNS integer[] LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    out integer[] := array_fill(NULL::integer, ARRAY[24]);
BEGIN
    FOR k IN 1 .. cardinality(hours) LOOP
        IF hours[k] BETWEEN 0 AND 23 THEN
            out[hours[k] + 1] := vals[k];
        END IF;
    END LOOP;
    RETURN out;
END;
$$;

-- Local hour of a reading: 0..23 when it starts on a whole local hour, else -1 (off grid).
-- UTC−5, no daylight saving, as cgm/localtime.py (instants after 1970: % stays positive).
CREATE FUNCTION reading_local_hour(t timestamptz) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN s % 3600000000 = 0 THEN (s / 3600000000)::integer ELSE -1 END
    FROM (SELECT ((date_part('epoch', t) * 1e6)::bigint - 18000000000) % 86400000000 AS s) AS x
$$;

CREATE FUNCTION reading_local_day(t timestamptz) RETURNS date
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ((t AT TIME ZONE 'UTC') - interval '5 hours')::date
$$;

-- reading_day of local days [lo, hi] made equal to `reading` again: rows rebuilt from the
-- readings (version + 1 where they differ), rows of days without readings deleted.
CREATE FUNCTION reading_day_rebuild(lo date, hi date) RETURNS void
LANGUAGE sql AS $$
    DELETE FROM reading_day d
    WHERE d.day BETWEEN lo AND hi
      AND NOT EXISTS (
          SELECT 1 FROM reading r
          WHERE r.meter_id = d.meter_id AND r.channel = d.channel
            AND r.interval_start >= (d.day + time '05:00') AT TIME ZONE 'UTC'
            AND r.interval_start < (d.day + 1 + time '05:00') AT TIME ZONE 'UTC');
    INSERT INTO reading_day AS d (meter_id, channel, day, value, quality, off_grid)
    SELECT meter_id, channel, day,
           reading_day_slots(array_agg(h), array_agg(value)),
           reading_day_slots(array_agg(h), array_agg(quality)),
           bool_or(h < 0)
    FROM (SELECT meter_id, channel, reading_local_day(interval_start) AS day,
                 reading_local_hour(interval_start) AS h, value, quality
          FROM reading
          WHERE interval_start >= (lo + time '05:00') AT TIME ZONE 'UTC'
            AND interval_start < (hi + 1 + time '05:00') AT TIME ZONE 'UTC') AS r
    GROUP BY meter_id, channel, day
    ORDER BY meter_id, channel, day
    ON CONFLICT (meter_id, channel, day) DO UPDATE
        SET value = excluded.value, quality = excluded.quality, off_grid = excluded.off_grid,
            version = d.version + 1
        WHERE (d.value, d.quality, d.off_grid)
              IS DISTINCT FROM (excluded.value, excluded.quality, excluded.off_grid);
$$;

-- Backfill.
SELECT reading_day_rebuild(reading_local_day(min(interval_start)),
                           reading_local_day(max(interval_start)))
FROM reading HAVING count(*) > 0;

-- Retention follows reading's: after dropping chunks of `reading`, the days before the
-- oldest kept reading go, and the day it starts in is rebuilt (its earlier hours went).
CREATE OR REPLACE PROCEDURE cgm_retention(job_id integer, config jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    tbl text := config ->> 'hypertable';
    drop_after interval := (config ->> 'drop_after')::interval;
    cutoff timestamptz;
    dropped_to timestamptz;
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
        dropped_to := greatest(dropped_to, r.range_end);
    END LOOP;
    PERFORM drop_chunks(tbl::regclass, older_than => cutoff);
    IF tbl = 'reading' AND dropped_to IS NOT NULL THEN
        DELETE FROM reading_day WHERE day < reading_local_day(dropped_to);
        PERFORM reading_day_rebuild(reading_local_day(dropped_to),
                                    reading_local_day(dropped_to));
    END IF;
END;
$$;
