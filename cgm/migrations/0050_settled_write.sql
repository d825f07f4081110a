-- settled_reading without per-row foreign-key triggers (cgm.storage.settled).
-- A VEE run writes a value per frontier, channel and hour: about a million rows a day for
-- 10,000 frontiers. A foreign key costs a trigger query and a row lock for every inserted
-- row (~38 µs a row measured on the development host, six times the insert itself), as
-- 0006 found for reading.channel. The same guarantees, paid once per batch instead:
-- * channel: a CHECK of the same four fixed ids (as reading.channel since 0006);
-- * frontier: write_settled checks the batch's frontier ids and takes FOR KEY SHARE on
--   those frontier rows in its transaction (so a concurrent delete waits), and a frontier
--   that has settled values cannot be deleted (the trigger below: ON DELETE RESTRICT).
ALTER TABLE settled_reading
    DROP CONSTRAINT IF EXISTS settled_reading_channel_fkey,
    DROP CONSTRAINT IF EXISTS settled_reading_frontier_id_fkey,
    ADD CONSTRAINT settled_reading_channel_known CHECK (channel BETWEEN 1 AND 4);

CREATE FUNCTION frontier_keeps_settled() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM settled_reading WHERE frontier_id = OLD.id) THEN
        RAISE EXCEPTION 'frontier % has settled values and cannot be deleted', OLD.id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN OLD;
END $$;

CREATE TRIGGER frontier_keeps_settled BEFORE DELETE ON frontier
    FOR EACH ROW EXECUTE FUNCTION frontier_keeps_settled();
