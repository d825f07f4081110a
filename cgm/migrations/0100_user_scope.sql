-- Users scoped to frontiers (art. 9.1.1.21: the user, the network operator and the ASIC see
-- their own frontiers). A scoped user sees only the frontiers listed for them, none when
-- the list is empty; an unscoped user (the representative's staff) sees every frontier.
ALTER TABLE app_user ADD COLUMN scoped boolean NOT NULL DEFAULT false;

CREATE TABLE app_user_frontier (
    user_id      bigint NOT NULL REFERENCES app_user (id) ON DELETE CASCADE,
    frontier_id  bigint NOT NULL REFERENCES frontier (id) ON DELETE CASCADE,
    granted_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, frontier_id)
);
CREATE INDEX app_user_frontier_frontier ON app_user_frontier (frontier_id);
CREATE TRIGGER app_user_frontier_audit AFTER INSERT OR UPDATE OR DELETE ON app_user_frontier
    FOR EACH ROW EXECUTE FUNCTION audit_row();
