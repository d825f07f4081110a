-- Registry facts the market users, monthly reporting and the calibration check need.
--
-- ``network_operator``: the code of the frontier's network operator (OR). Art. 9.1.1.21
-- gives the OR and the ASIC level-1 access to the frontier's measurements; ``cgm user
-- sync-market`` (or ``cgm registry import --market-users``) creates one level-1 user per
-- OR scoped to exactly its frontiers, and one ASIC user scoped to every reported frontier.
-- ``app_user.market_role`` marks those users ('network_operator:<OR>' or 'asic') so a
-- later sync finds them again; other users never have one.
--
-- ``asic_period``: 'daily' (24 hourly readings per day, the default) or 'monthly' (one
-- reading per month, XM's ReadingCount 1, e.g. embedded frontiers).
--
-- ``calibration_interval_years``: how long a calibration stays valid for the audit; null
-- means the Table 4 interval of the frontier's point type (no source fixes another one).
ALTER TABLE frontier
    ADD COLUMN network_operator text
        CHECK (network_operator ~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$'),
    ADD COLUMN asic_period text NOT NULL DEFAULT 'daily'
        CHECK (asic_period IN ('daily', 'monthly')),
    ADD COLUMN calibration_interval_years double precision
        CHECK (calibration_interval_years > 0 AND calibration_interval_years <= 50);
CREATE INDEX frontier_network_operator ON frontier (network_operator)
    WHERE network_operator IS NOT NULL;

ALTER TABLE app_user ADD COLUMN market_role text UNIQUE
    CHECK (market_role = 'asic' OR market_role ~ '^network_operator:[A-Za-z0-9][A-Za-z0-9_-]{0,39}$');
