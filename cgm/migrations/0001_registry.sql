-- Frontier registry: frontiers, their meters, and meter credentials (encrypted at rest).

CREATE TABLE frontier (
    id                      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code                    text NOT NULL UNIQUE CHECK (code ~ '^Frt[0-9]+$'),
    name                    text NOT NULL,
    kind                    text NOT NULL CHECK (kind IN
                              ('generation', 'commercialisation', 'distribution',
                               'international_link')),
    stn                     boolean NOT NULL DEFAULT false,
    voltage_level           smallint NOT NULL CHECK (voltage_level BETWEEN 1 AND 4),
    installed_capacity_mva  double precision CHECK (installed_capacity_mva >= 0),
    monthly_energy_mwh      double precision CHECK (monthly_energy_mwh >= 0),
    adjustment_factor       double precision NOT NULL DEFAULT 1 CHECK (adjustment_factor > 0),
    point_type              smallint NOT NULL CHECK (point_type BETWEEN 1 AND 5),
    point_type_explicit     boolean NOT NULL DEFAULT false,
    clock_target_s          double precision CHECK (clock_target_s > 0),
    attributes              jsonb NOT NULL DEFAULT '{}',
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE meter (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    frontier_id         bigint NOT NULL REFERENCES frontier (id) ON DELETE RESTRICT,
    serial              text NOT NULL UNIQUE,
    role                text NOT NULL CHECK (role IN ('principal', 'backup')),
    protocol            text NOT NULL CHECK (protocol IN ('dlms', 'modbus', 'mqtt')),
    primary_host        text NOT NULL,
    primary_port        integer NOT NULL CHECK (primary_port BETWEEN 1 AND 65535),
    backup_host         text,
    backup_port         integer CHECK (backup_port BETWEEN 1 AND 65535),
    params              jsonb NOT NULL DEFAULT '{}',
    ct_ratio            double precision NOT NULL DEFAULT 1 CHECK (ct_ratio > 0),
    vt_ratio            double precision NOT NULL DEFAULT 1 CHECK (vt_ratio > 0),
    accuracy_active     text,
    accuracy_reactive   text,
    manufacturer        text,
    model               text,
    active              boolean NOT NULL DEFAULT true,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CHECK ((backup_host IS NULL) = (backup_port IS NULL))
);
-- One active principal and at most one active backup per frontier.
CREATE UNIQUE INDEX meter_one_role_per_frontier ON meter (frontier_id, role) WHERE active;

-- Meter access secrets per art. 17 level, encrypted by the service (never stored in clear).
CREATE TABLE meter_credential (
    meter_id    bigint NOT NULL REFERENCES meter (id) ON DELETE CASCADE,
    level       smallint NOT NULL CHECK (level IN (1, 2)),
    client      text,
    secret_enc  bytea NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (meter_id, level)
);
