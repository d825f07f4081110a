-- Write path support (cgm.storage).

-- The batch log serves both write paths: say which table a batch went to, and how many
-- automatic values it did not apply because a manual value stands (settled only).
ALTER TABLE ingest_batch
    ADD COLUMN target text NOT NULL DEFAULT 'reading'
        CHECK (target IN ('reading', 'settled_reading')),
    ADD COLUMN kept_manual integer NOT NULL DEFAULT 0;

-- reading.channel: a CHECK instead of the foreign key to the four fixed rows of `channel`.
-- Same accepted set, but a foreign key costs a per-row trigger query and row lock on every
-- inserted reading: about 9 µs a row here, a third of the bulk write time
-- (benchmarks/README.md). Adding a channel means adding it to this CHECK as well.
-- settled_reading (a few rows an hour) keeps its foreign key.
ALTER TABLE reading
    DROP CONSTRAINT reading_channel_fkey,
    ADD CONSTRAINT reading_channel_known CHECK (channel BETWEEN 1 AND 4);
