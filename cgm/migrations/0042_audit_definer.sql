-- Least privilege: the service role writes readings but can neither write nor forge audit
-- rows. The audit trigger therefore runs with its owner's rights (SECURITY DEFINER) and
-- names the session's login role (session_user) as the database user, since current_user
-- inside it is the owner. Roles and grants follow configuration and are applied by
-- cgm.migrate.apply_privileges at every upgrade.

CREATE OR REPLACE FUNCTION audit_row() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO audit_log (table_name, op, old_row, new_row, db_user, actor, reason)
    VALUES (
        coalesce(TG_ARGV[0], TG_TABLE_NAME),
        left(TG_OP, 1),
        CASE WHEN TG_OP IN ('UPDATE', 'DELETE') THEN to_jsonb(OLD) END,
        CASE WHEN TG_OP IN ('UPDATE', 'INSERT') THEN to_jsonb(NEW) END,
        session_user,
        nullif(current_setting('cgm.actor', true), ''),
        nullif(current_setting('cgm.reason', true), '')
    );
    RETURN NULL;
END;
$$;

-- Only the chain trigger links rows.
REVOKE EXECUTE ON FUNCTION chain_link(text, bigint) FROM PUBLIC;
