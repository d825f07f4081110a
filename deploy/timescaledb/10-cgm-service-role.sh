#!/bin/sh
# Runs once, when the TimescaleDB container initialises an empty data volume: creates the
# least-privileged role the cgm service logs in as, with its password from the environment
# (psql variable, never written to a file). `cgm db upgrade` (cgm-migrate, as the
# administrator) then creates the owner role and grants the service role its row rights.
set -eu
psql -v ON_ERROR_STOP=1 -v pw="$CGM_DB_SERVICE_PASSWORD" \
  --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
SELECT format('CREATE ROLE cgm_service LOGIN PASSWORD %L', :'pw')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'cgm_service') \gexec
SQL
