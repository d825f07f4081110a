-- The batch log serves both write paths (cgm.storage): say which table a batch went to, and
-- how many automatic values it did not apply because a manual value stands (settled only).
ALTER TABLE ingest_batch
    ADD COLUMN target text NOT NULL DEFAULT 'reading'
        CHECK (target IN ('reading', 'settled_reading')),
    ADD COLUMN kept_manual integer NOT NULL DEFAULT 0;
