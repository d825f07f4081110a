-- requires: timescaledb
-- Hypertables, compression after the recent window, and a daily continuous aggregate.
-- Written from TimescaleDB's documentation (create_hypertable with by_range, 2.13+;
-- ALTER TABLE ... SET (timescaledb.compress ...); add_compression_policy;
-- CREATE MATERIALIZED VIEW ... WITH (timescaledb.continuous)). Retention is not here: it
-- follows configuration and is set by cgm.migrate.apply_policies at every upgrade.

SELECT create_hypertable('reading', by_range('interval_start', INTERVAL '30 days'),
                         if_not_exists => TRUE, migrate_data => TRUE);
SELECT create_hypertable('settled_reading', by_range('interval_start', INTERVAL '30 days'),
                         if_not_exists => TRUE, migrate_data => TRUE);

ALTER TABLE reading SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'meter_id, channel',
    timescaledb.compress_orderby = 'interval_start'
);
ALTER TABLE settled_reading SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'frontier_id, channel',
    timescaledb.compress_orderby = 'interval_start'
);
SELECT add_compression_policy('reading', current_setting('cgm.compress_after')::interval,
                              if_not_exists => TRUE);
SELECT add_compression_policy('settled_reading',
                              current_setting('cgm.compress_after')::interval,
                              if_not_exists => TRUE);

-- Daily energy per frontier and channel on the Colombian day (UTC−5, no DST).
CREATE MATERIALIZED VIEW settled_daily WITH (timescaledb.continuous) AS
SELECT frontier_id, channel,
       time_bucket(INTERVAL '1 day', interval_start, 'America/Bogota') AS local_day,
       sum(value) AS energy, count(*) AS periods
FROM settled_reading
GROUP BY frontier_id, channel, local_day
WITH NO DATA;
SELECT add_continuous_aggregate_policy('settled_daily',
    start_offset => INTERVAL '45 days', end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '1 hour');
