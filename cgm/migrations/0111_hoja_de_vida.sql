-- The hoja de vida of each frontier (art. 9.1.1.29): equipment, seals, calibrations,
-- verifications, maintenance, the cable-error calculation, the adjustment-factor support and
-- dated manual entries, as dated entries validated by section (cgm/hoja_de_vida.py).
-- Entries are only added: a removal (a seal taken off, equipment replaced) is a new entry,
-- so the record reads as the history it is. Changes to stored rows are audited.
CREATE TABLE hoja_entry (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    frontier_id  bigint NOT NULL REFERENCES frontier (id) ON DELETE RESTRICT,
    section      text NOT NULL CHECK (section IN ('equipment', 'seal', 'calibration',
                     'verification', 'maintenance', 'cable_error', 'adjustment_factor',
                     'note')),
    entry_date   date NOT NULL,             -- the date of the fact, as the user states it
    data         jsonb NOT NULL,
    actor        text NOT NULL,             -- cli:<user> / api:<user>, a level-2 user
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX hoja_entry_frontier ON hoja_entry (frontier_id, section, entry_date);
CREATE TRIGGER hoja_entry_audit AFTER UPDATE OR DELETE ON hoja_entry
    FOR EACH ROW EXECUTE FUNCTION audit_row();
