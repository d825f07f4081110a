-- settled_day: a read model of settled_reading, one row per frontier, channel and Colombian
-- local day with the day's 24 settled values as arrays (index 1 = period 1, 00:00–01:00).
--
-- settled_reading stays the record (audit chain, manual edits, versions, detail). Readers
-- that want days (VEE's typical-curve history, the portal, the API) read 1 row instead of
-- 24: for a 10,000-frontier fleet, 40,000 rows a day instead of 960,000. Kept equal to
-- settled_reading by cgm.storage.write_settled in the same transaction as the values it
-- writes (the only writer of settled_reading); rebuilt for a range of days by
-- settled_day_rebuild (the backfill below, retention on TimescaleDB).
--
-- Per hour: value (NULL: nothing settled), source (0 none, 1 principal, 2 backup,
-- 3 estimate, 4 manual), flags (quality bits, 0 where none), method (the estimation
-- method where source is 3; the whole array is NULL on a day without estimates).
-- version: 1 when the row is created, + 1 each time a write changes the day's values.
-- A regular table on both backends: 40,000 narrow rows a day need no chunking, and its
-- rows are updated in place by re-settles and edits (no compression wanted).
CREATE TABLE settled_day (
    frontier_id  bigint NOT NULL,
    channel      smallint NOT NULL CHECK (channel BETWEEN 1 AND 4),
    day          date NOT NULL,
    value        double precision[] NOT NULL CHECK (cardinality(value) = 24),
    source       smallint[] NOT NULL CHECK (cardinality(source) = 24),
    flags        integer[] NOT NULL CHECK (cardinality(flags) = 24),
    method       text[] CHECK (cardinality(method) = 24),
    version      bigint NOT NULL DEFAULT 1,
    PRIMARY KEY (frontier_id, channel, day)
);
-- Whole-fleet reads of a few days (VEE's history).
CREATE INDEX settled_day_day ON settled_day (day);

-- The local hour (0..23) and day of an interval start: Colombia is UTC−5 all year
-- (cgm.localtime), so fixed arithmetic, independent of the server's zone setting.
CREATE FUNCTION settled_local_day(t timestamptz) RETURNS date
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ((t AT TIME ZONE 'UTC') + interval '-5 hours')::date;

CREATE FUNCTION settled_local_hour(t timestamptz) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN extract(hour FROM (t AT TIME ZONE 'UTC') + interval '-5 hours')::integer;

-- The elements of `vals` at the hours (0..23) in `hours`, NULL elsewhere: 24 elements.
CREATE FUNCTION settled_day_spread(hours integer[], vals anycompatiblearray)
RETURNS anycompatiblearray
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE WHEN cardinality(hours) = 24 THEN vals
            ELSE ARRAY(SELECT vals[array_position(hours, k)] FROM generate_series(0, 23) k
                       ORDER BY k) END
$$;

-- A write merged into a stored day, hour by hour, with settled_reading's manual rule: the
-- new element where the write has a value (new_src <> 0) unless the stored one is manual
-- and the new one is not; the stored element elsewhere.
CREATE FUNCTION settled_day_merge(old_src smallint[], new_src smallint[],
                                  old_val anycompatiblearray, new_val anycompatiblearray)
RETURNS anycompatiblearray
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT ARRAY(
    SELECT CASE WHEN new_src[k] <> 0 AND (coalesce(old_src[k], 0) <> 4 OR new_src[k] = 4)
                THEN new_val[k] ELSE old_val[k] END
    FROM generate_series(1, 24) k ORDER BY k)
$$;

-- Recompute settled_day for local days first_day..last_day from settled_reading.
CREATE FUNCTION settled_day_rebuild(first_day date, last_day date) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    DELETE FROM settled_day WHERE day BETWEEN first_day AND last_day;
    INSERT INTO settled_day (frontier_id, channel, day, value, source, flags, method)
    SELECT frontier_id, channel, day,
           settled_day_spread(hs, vs),
           array_replace(settled_day_spread(hs, ss), NULL, 0::smallint),
           array_replace(settled_day_spread(hs, fs), NULL, 0),
           CASE WHEN 3 = ANY(ss) THEN settled_day_spread(hs, ms) END
    FROM (SELECT frontier_id, channel, settled_local_day(interval_start) AS day,
                 array_agg(settled_local_hour(interval_start) ORDER BY interval_start) hs,
                 array_agg(value ORDER BY interval_start) vs,
                 array_agg(CASE source WHEN 'principal' THEN 1 WHEN 'backup' THEN 2
                                       WHEN 'estimate' THEN 3 ELSE 4 END::smallint
                           ORDER BY interval_start) ss,
                 array_agg(flags ORDER BY interval_start) fs,
                 array_agg(method ORDER BY interval_start) ms
          FROM settled_reading
          WHERE interval_start >= (first_day::timestamp + interval '5 hours') AT TIME ZONE 'UTC'
            AND interval_start < (last_day::timestamp + interval '29 hours') AT TIME ZONE 'UTC'
          GROUP BY 1, 2, 3) g;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

SELECT settled_day_rebuild('-infinity', 'infinity');

-- The prolonged-estimation alarm finds a channel's last non-estimated hour in settled_day
-- now (cgm.vee.run), so settled_reading no longer needs this index: one index fewer to
-- maintain for each of the million values a large fleet's day writes.
DROP INDEX IF EXISTS settled_reading_measured;

-- Retention of settled_day follows settled_reading's (TimescaleDB only, cgm_retention of
-- migration 0043): every chunk it drops is recorded in audit_log (op 'R') in the transaction
-- of the drop_chunks; when that transaction commits (the chunks gone), the settled_day rows
-- of the days before the chunk's end go and the day the end falls in is rebuilt from what is
-- left. A deferred trigger rather than a change of the job, so that it holds whatever else
-- the job does.
CREATE FUNCTION settled_day_follow_retention() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    cut date := settled_local_day((NEW.old_row ->> 'range_end')::timestamptz);
BEGIN
    DELETE FROM settled_day WHERE day < cut;
    PERFORM settled_day_rebuild(cut, cut);
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER settled_day_follows_retention AFTER INSERT ON audit_log
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (NEW.op = 'R' AND NEW.table_name = 'settled_reading')
    EXECUTE FUNCTION settled_day_follow_retention();
