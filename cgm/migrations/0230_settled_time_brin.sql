-- settled_reading's time index as a BRIN (block range) index instead of a btree.
--
-- Settled values arrive in time order: a run writes the hours of its day, a fleet's first
-- settle a whole day at once, so a day's rows lie in a run of neighbouring pages and a
-- block-range summary of interval_start finds them. The btree sorted every one of a first
-- settle's ~1 M rows into 24 keys: a seventh of the run's server time (benchmarks/README.md,
-- VEE). Its readers are the queries by time alone over every frontier (annual report,
-- compliance audit, TimescaleDB's daily aggregate); the per-frontier readers use the
-- primary key. autosummarize: autovacuum summarizes each filled range as it goes
-- (until then a range is read whole, so results never depend on it).
DROP INDEX settled_reading_interval_start;
CREATE INDEX settled_reading_interval_start ON settled_reading USING brin (interval_start)
    WITH (autosummarize = on);
