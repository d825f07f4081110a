-- Invoices a unit loads for a meter of the consumption portal. Only the owner unit of the
-- meter's client number may load them (checked by cgm.portal.store, the one writer); who
-- loaded each one and when is kept. One invoice per meter and billing period.

CREATE TABLE portal_invoice (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    meter_id        bigint NOT NULL REFERENCES portal_meter (id),
    period_start    date NOT NULL,
    period_end      date NOT NULL CHECK (period_end >= period_start),
    energy_kwh      numeric NOT NULL CHECK (energy_kwh >= 0),
    amount          numeric NOT NULL CHECK (amount >= 0),  -- in the invoice's currency
    invoice_number  text NOT NULL CHECK (invoice_number <> ''),
    loaded_by_unit  bigint NOT NULL REFERENCES portal_unit (id),
    actor           text NOT NULL,
    loaded_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (meter_id, period_start, period_end)
);
