-- No planner statistics for settled_reading's columns that no query filters, joins or
-- groups on: provenance, audit fields, the value itself.
--
-- A fleet's first settle of a day refreshes the day's statistics at once (the planner
-- would otherwise take the new day for empty: cgm.storage.settled.analyze_settled). ANALYZE
-- sorts its ~30,000-row sample once per column, and most of the 16 columns only cost: on
-- plain PostgreSQL 0.56 s for the whole table, 0.25–0.28 s without these eleven
-- (benchmarks/README.md, VEE). The key columns (frontier, channel, time, and the day
-- expression of settled_reading_key), source and flags keep theirs.
ALTER TABLE settled_reading
    ALTER COLUMN value SET STATISTICS 0,
    ALTER COLUMN method SET STATISTICS 0,
    ALTER COLUMN detail SET STATISTICS 0,
    ALTER COLUMN version SET STATISTICS 0,
    ALTER COLUMN settled_at SET STATISTICS 0,
    ALTER COLUMN actor SET STATISTICS 0,
    ALTER COLUMN reason SET STATISTICS 0,
    ALTER COLUMN meter_id SET STATISTICS 0,
    ALTER COLUMN reading_version SET STATISTICS 0,
    ALTER COLUMN secondary SET STATISTICS 0,
    ALTER COLUMN factor SET STATISTICS 0;
