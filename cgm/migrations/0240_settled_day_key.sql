-- settled_reading's key led by the local day: (settled_local_day(interval_start),
-- frontier_id, channel, interval_start) instead of (frontier_id, channel, interval_start).
--
-- Why: values arrive by time (each collection cycle's VEE run settles the hours it read, a
-- fleet's first settle a whole day), but a series-led key put each series' new hour at the
-- end of that series' keys: one leaf page per series touched per run, and after every
-- checkpoint each page goes whole to the WAL (a full-page image). One hour of 10,000
-- frontiers (40,000 values) wrote 292 MB of WAL, a first settle of a day 491 MB, of which
-- 310 MB was this index (benchmarks/README.md, "settled_reading keyed by day"). Led by the
-- day, a day's keys lie together at the end of the index: the same hour writes 11–50 MB,
-- the first settle 296 MB.
--
-- Uniqueness is unchanged (the day is a function of interval_start). A unique index and
-- not a primary key, which cannot hold an expression: writers name it as their ON CONFLICT
-- target (cgm.storage.settled), readers of a frontier name the days they want,
-- settled_local_day(interval_start) = ANY(days), one index descent per day
-- (cgm.storage.settled.on_days). Readers of every frontier by time use the BRIN (0230).
--
-- The day is settled_local_day(interval_start) written out (what PostgreSQL inlines it to,
-- so queries naming the function use the index): TimescaleDB checks a new unique index on
-- compressed chunks with a query that cannot see this schema's functions.
ALTER TABLE settled_reading DROP CONSTRAINT settled_reading_pkey;
CREATE UNIQUE INDEX settled_reading_key ON settled_reading (
    (((interval_start AT TIME ZONE 'UTC') + interval '-5 hours')::date),
    frontier_id, channel, interval_start);

-- A frontier with settled values cannot be deleted: asked of settled_day (one row per
-- frontier, channel and day that has settled values, kept equal to settled_reading by its
-- writer and by retention, migration 0200), which the frontier leads, instead of a scan of
-- settled_reading, which it no longer leads.
CREATE OR REPLACE FUNCTION frontier_keeps_settled() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM settled_day WHERE frontier_id = OLD.id) THEN
        RAISE EXCEPTION 'frontier % has settled values and cannot be deleted', OLD.id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN OLD;
END $$;
