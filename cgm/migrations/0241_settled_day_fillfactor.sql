-- settled_day keeps 30 % of each page free, as reading_day does (migration 0210).
--
-- A day's row grows hour by hour (its arrays fill as the day's hours are settled). With
-- full pages each new day's short rows went into the gaps left all over the table, one row
-- per page, and each of those pages went whole to the WAL after a checkpoint: 1,200 new
-- rows wrote 4.7 MB (tests/storage/test_settled.py). With room kept free, a new day's rows
-- are appended together and their hourly growth is a HOT update in place: 0.4 MB.
-- Existing pages keep their rows; the setting governs where new rows go.
ALTER TABLE settled_day SET (fillfactor = 70);
