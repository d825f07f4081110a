-- The API lists collection sessions newest first, a page at a time (keyset on started_at,
-- id). Without an index in that order every request sorted the whole table, which grows by
-- one row per meter and cycle (a million a day at national scale): the page's cost grew
-- with the history instead of staying that of 100 rows.
CREATE INDEX collection_session_recent ON collection_session (started_at DESC, id DESC);
