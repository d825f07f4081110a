-- The service's own users (art. 17: two access levels, a password per user) and the log of
-- every level-2 request to the HTTP API.
--
-- The argon2 hash lives in app_user_password, apart from app_user, so the audit trigger on
-- app_user (the same audit_row() as the registry) never copies a hash into audit_log, and
-- failed-login bookkeeping does not flood the audit log. A password change touches
-- app_user.password_changed_at in the same transaction, so it is audited (without the hash).

CREATE TABLE app_user (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username             text NOT NULL UNIQUE CHECK (username ~ '^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$'),
    level                smallint NOT NULL CHECK (level IN (1, 2)),
    active               boolean NOT NULL DEFAULT true,
    password_changed_at  timestamptz NOT NULL DEFAULT now(),
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER app_user_audit AFTER INSERT OR UPDATE OR DELETE ON app_user
    FOR EACH ROW EXECUTE FUNCTION audit_row();

CREATE TABLE app_user_password (
    user_id         bigint PRIMARY KEY REFERENCES app_user (id) ON DELETE CASCADE,
    hash            text NOT NULL CHECK (hash LIKE '$argon2%'),
    failed_logins   integer NOT NULL DEFAULT 0,
    last_failed_at  timestamptz,
    locked_until    timestamptz,
    last_login_at   timestamptz
);

-- Every request to a level-2 (write) endpoint: allowed, refused or failed. Append-only.
CREATE TABLE api_access (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    username     text,
    user_level   smallint,
    method       text NOT NULL,
    path         text NOT NULL,
    frontier     text,                   -- frontier code, when the request concerns one
    reason       text,
    status       integer NOT NULL,
    client       text,
    detail       jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX api_access_at ON api_access (at);
CREATE INDEX api_access_user ON api_access (username, at);

CREATE FUNCTION api_access_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'api_access is append-only';
END;
$$;
CREATE TRIGGER api_access_no_change BEFORE UPDATE OR DELETE ON api_access
    FOR EACH ROW EXECUTE FUNCTION api_access_append_only();
