-- The API remembers authenticated credentials with their level, scope and portal unit
-- (cgm/api/access.py). Any change that could alter who a credential is, or what it may
-- see, tells every API process at commit: a NOTIFY on cgm_access, which empties their
-- caches. last_login_at and failed-login bookkeeping do not notify (they change nothing).

CREATE FUNCTION access_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('cgm_access', TG_TABLE_NAME);
    RETURN NULL;
END $$;

CREATE TRIGGER app_user_access_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON app_user
    FOR EACH STATEMENT EXECUTE FUNCTION access_changed();
CREATE TRIGGER app_user_frontier_access_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON app_user_frontier
    FOR EACH STATEMENT EXECUTE FUNCTION access_changed();
CREATE TRIGGER portal_unit_user_access_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON portal_unit_user
    FOR EACH STATEMENT EXECUTE FUNCTION access_changed();
CREATE TRIGGER app_user_password_access_changed
    AFTER UPDATE ON app_user_password
    FOR EACH ROW WHEN (OLD.hash IS DISTINCT FROM NEW.hash) EXECUTE FUNCTION access_changed();
CREATE TRIGGER app_user_password_access_removed
    AFTER DELETE OR TRUNCATE ON app_user_password
    FOR EACH STATEMENT EXECUTE FUNCTION access_changed();
