-- Consumption portal inventory (modelled on Gestiona Energía): buildings, units, energy
-- sources, client numbers and meters. A meter belongs to the client number's owner unit;
-- other units read it through portal_meter_unit. Owner changes are logged, never silent.

CREATE TABLE portal_building (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    region    text NOT NULL,
    province  text NOT NULL CHECK (province <> ''),
    commune   text NOT NULL CHECK (commune <> ''),
    street    text NOT NULL CHECK (street <> ''),
    number    text NOT NULL CHECK (number <> ''),
    latitude  double precision CHECK (latitude BETWEEN -90 AND 90),
    longitude double precision CHECK (longitude BETWEEN -180 AND 180)
);
-- One address is one building.
CREATE UNIQUE INDEX portal_building_address
    ON portal_building (lower(region), lower(commune), lower(street), lower(number));

CREATE TABLE portal_unit (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code                text NOT NULL UNIQUE CHECK (code <> ''),
    building_id         bigint NOT NULL REFERENCES portal_building (id),
    institution         text NOT NULL,
    service             text NOT NULL,
    name                text NOT NULL,
    use_type            text NOT NULL,
    floors              text NOT NULL,
    surface_m2          numeric NOT NULL CHECK (surface_m2 > 0),
    property_type       text NOT NULL,
    roll_numbers        text[] NOT NULL DEFAULT '{}',
    roll_justification  text,
    construction_year   integer CHECK (construction_year BETWEEN 1500 AND 2200),
    staff_count         integer NOT NULL CHECK (staff_count >= 0),
    reports_pmg         boolean NOT NULL,
    invoice_access      text NOT NULL
                        CHECK (invoice_access IN ('yes', 'other_service', 'other_organisation')),
    invoice_holder      text,
    non_reporting_justification text,
    CHECK (cardinality(roll_numbers) > 0 OR coalesce(roll_justification, '') <> ''),
    CHECK ((invoice_access = 'yes') = (invoice_holder IS NULL))
);
CREATE TRIGGER portal_unit_audit AFTER INSERT OR UPDATE OR DELETE ON portal_unit
    FOR EACH ROW EXECUTE FUNCTION audit_row();

CREATE TABLE portal_energy_source (
    unit_id  bigint NOT NULL REFERENCES portal_unit (id) ON DELETE CASCADE,
    source   text NOT NULL CHECK (source IN ('electricity', 'natural_gas', 'lpg')),
    enabled  boolean NOT NULL,
    PRIMARY KEY (unit_id, source)
);

CREATE TABLE portal_client_number (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company             text NOT NULL CHECK (company <> ''),
    number              text NOT NULL CHECK (number <> ''),
    tariff_type         text NOT NULL,
    connected_power_kw  double precision CHECK (connected_power_kw >= 0),
    owner_unit_id       bigint NOT NULL REFERENCES portal_unit (id)
);
CREATE UNIQUE INDEX portal_client_number_key ON portal_client_number (lower(company), number);
CREATE TRIGGER portal_client_number_audit AFTER INSERT OR UPDATE OR DELETE
    ON portal_client_number FOR EACH ROW EXECUTE FUNCTION audit_row();

CREATE TABLE portal_meter (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client_number_id  bigint NOT NULL REFERENCES portal_client_number (id),
    number            text NOT NULL UNIQUE CHECK (number <> ''),
    energy_source     text NOT NULL CHECK (energy_source IN ('electricity', 'natural_gas', 'lpg')),
    smart             boolean NOT NULL,
    shared            boolean NOT NULL,
    invoice_access    boolean NOT NULL,
    frontier_id       bigint REFERENCES frontier (id),
    channel           smallint REFERENCES channel (id),
    CHECK ((frontier_id IS NULL) = (channel IS NULL))
);
CREATE TRIGGER portal_meter_audit AFTER INSERT OR UPDATE OR DELETE ON portal_meter
    FOR EACH ROW EXECUTE FUNCTION audit_row();

-- Units that read a meter they do not own.
CREATE TABLE portal_meter_unit (
    meter_id  bigint NOT NULL REFERENCES portal_meter (id) ON DELETE CASCADE,
    unit_id   bigint NOT NULL REFERENCES portal_unit (id) ON DELETE CASCADE,
    since     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (meter_id, unit_id)
);

-- Change of owner of a client number (and its meters): an administrator action.
CREATE TABLE portal_owner_change (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at                timestamptz NOT NULL DEFAULT clock_timestamp(),
    client_number_id  bigint NOT NULL REFERENCES portal_client_number (id),
    old_unit_id       bigint NOT NULL REFERENCES portal_unit (id),
    new_unit_id       bigint NOT NULL REFERENCES portal_unit (id),
    actor             text NOT NULL,
    reason            text NOT NULL CHECK (reason <> '')
);

-- A service user that acts for one unit only (the portal's token): it reads what the unit
-- owns or is associated with, and edits only what the unit owns.
CREATE TABLE portal_unit_user (
    user_id  bigint PRIMARY KEY REFERENCES app_user (id) ON DELETE CASCADE,
    unit_id  bigint NOT NULL REFERENCES portal_unit (id)
);
