"""Services cgm starts in-process when none is configured (PostgreSQL, MQTT broker)."""
