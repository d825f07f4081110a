-- Audit log written by the database itself: who (database role and the application actor
-- set with SET LOCAL cgm.actor), when, why (cgm.reason), old and new row images.

CREATE TABLE audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    table_name  text NOT NULL,
    op          char(1) NOT NULL CHECK (op IN ('I', 'U', 'D')),
    old_row     jsonb,
    new_row     jsonb,
    db_user     text NOT NULL DEFAULT current_user,
    actor       text,
    reason      text
);
CREATE INDEX audit_log_table_at ON audit_log (table_name, at);

CREATE FUNCTION audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit_log (table_name, op, old_row, new_row, actor, reason)
    VALUES (
        TG_TABLE_NAME,
        left(TG_OP, 1),
        CASE WHEN TG_OP IN ('UPDATE', 'DELETE') THEN to_jsonb(OLD) END,
        CASE WHEN TG_OP IN ('UPDATE', 'INSERT') THEN to_jsonb(NEW) END,
        nullif(current_setting('cgm.actor', true), ''),
        nullif(current_setting('cgm.reason', true), '')
    );
    RETURN NULL;
END;
$$;

-- Readings: every modification and deletion, row by row (additions: ingest_batch).
CREATE TRIGGER reading_audit AFTER UPDATE OR DELETE ON reading
    FOR EACH ROW EXECUTE FUNCTION audit_row();
CREATE TRIGGER settled_reading_audit AFTER UPDATE OR DELETE ON settled_reading
    FOR EACH ROW EXECUTE FUNCTION audit_row();
-- Registry: every change. Credential rows carry only ciphertext.
CREATE TRIGGER frontier_audit AFTER INSERT OR UPDATE OR DELETE ON frontier
    FOR EACH ROW EXECUTE FUNCTION audit_row();
CREATE TRIGGER meter_audit AFTER INSERT OR UPDATE OR DELETE ON meter
    FOR EACH ROW EXECUTE FUNCTION audit_row();
CREATE TRIGGER meter_credential_audit AFTER INSERT OR UPDATE OR DELETE ON meter_credential
    FOR EACH ROW EXECUTE FUNCTION audit_row();

-- The audit log itself is append-only.
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

-- Every version of a reading: the current row plus every superseded image.
CREATE VIEW reading_version AS
SELECT meter_id, channel, interval_start, version, value, quality, collected_at,
       NULL::timestamptz AS superseded_at, NULL::text AS superseded_by
FROM reading
UNION ALL
SELECT (old_row ->> 'meter_id')::bigint, (old_row ->> 'channel')::smallint,
       (old_row ->> 'interval_start')::timestamptz, (old_row ->> 'version')::integer,
       (old_row ->> 'value')::double precision, (old_row ->> 'quality')::integer,
       (old_row ->> 'collected_at')::timestamptz, at, coalesce(actor, db_user)
FROM audit_log
WHERE table_name = 'reading' AND op IN ('U', 'D');

CREATE VIEW settled_version AS
SELECT frontier_id, channel, interval_start, version, value, source, method, flags, detail,
       settled_at, actor, reason, NULL::timestamptz AS superseded_at
FROM settled_reading
UNION ALL
SELECT (old_row ->> 'frontier_id')::bigint, (old_row ->> 'channel')::smallint,
       (old_row ->> 'interval_start')::timestamptz, (old_row ->> 'version')::integer,
       (old_row ->> 'value')::double precision, old_row ->> 'source', old_row ->> 'method',
       (old_row ->> 'flags')::integer, old_row -> 'detail',
       (old_row ->> 'settled_at')::timestamptz, old_row ->> 'actor', old_row ->> 'reason', at
FROM audit_log
WHERE table_name = 'settled_reading' AND op IN ('U', 'D');
