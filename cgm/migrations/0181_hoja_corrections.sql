-- Corrections of the hoja de vida. Entries stay add-only: a level-2 user corrects or voids
-- an entry by adding a new one that references it (``corrects``), with the kind of
-- correction and the reason; the original row is never changed and stays in the record,
-- shown as corrected or voided. One correction per entry (correct the correction to change
-- it again), so the current version of any fact is one walk down the chain.
ALTER TABLE hoja_entry
    ADD COLUMN corrects bigint REFERENCES hoja_entry (id) ON DELETE RESTRICT,
    ADD COLUMN correction text CHECK (correction IN ('correct', 'void')),
    ADD COLUMN reason text CHECK (reason <> ''),
    ADD CONSTRAINT hoja_entry_correction_complete
        CHECK ((corrects IS NULL) = (correction IS NULL)
               AND (corrects IS NULL) = (reason IS NULL));
CREATE UNIQUE INDEX hoja_entry_corrected_once ON hoja_entry (corrects)
    WHERE corrects IS NOT NULL;

-- Add-only, enforced: an update or a delete of an entry is refused.
CREATE FUNCTION hoja_entry_add_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'hoja_entry is add-only: correct or void an entry with a new one';
END;
$$;
CREATE TRIGGER hoja_entry_no_change BEFORE UPDATE OR DELETE ON hoja_entry
    FOR EACH ROW EXECUTE FUNCTION hoja_entry_add_only();
