-- An MQTT meter's broker login (username, password and/or TLS client key) is kept with the
-- meter's credentials, encrypted the same way, as level 0: it is not an art. 17 access level
-- of the meter but the CGM's account on the broker that carries the meter's messages.
ALTER TABLE meter_credential DROP CONSTRAINT meter_credential_level_check;
ALTER TABLE meter_credential ADD CONSTRAINT meter_credential_level_check
    CHECK (level IN (0, 1, 2));
COMMENT ON COLUMN meter_credential.level IS
    '1, 2: art. 17 access levels; 0: the CGM''s login to an MQTT meter''s broker';
