-- Monthly ASIC documents (XM's ReadingCount 1) beside the daily ones: ``period`` says which;
-- a monthly document's ``day`` is the first local day of its month.
ALTER TABLE asic_document ADD COLUMN period text NOT NULL DEFAULT 'day'
    CHECK (period IN ('day', 'month'));
CREATE INDEX asic_document_month ON asic_document (meter_id, day) WHERE period = 'month';
