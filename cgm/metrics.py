"""Prometheus metrics, all defined here so dashboards and alerts have one reference.

Labels stay low-cardinality except where an operator needs a per-meter series (clock offset,
last success); those are bounded by the fleet size.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()  # the *_created series only add noise to dashboards

SESSIONS = Counter(
    "cgm_sessions_total", "Meter sessions by protocol and result", ["protocol", "result"]
)
SESSION_SECONDS = Histogram(
    "cgm_session_duration_seconds",
    "Duration of a meter session (all steps)",
    ["protocol"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
STORE_SECONDS = Histogram(
    "cgm_store_batch_duration_seconds",
    "Duration of storing one batch of session outcomes, commit included: the database's "
    "share of a cycle (it grows when the server is busy, e.g. during a large VEE run)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CLOCK_OFFSET = Gauge(
    "cgm_meter_clock_offset_seconds", "Last measured meter clock offset", ["meter", "frontier"]
)
CLOCK_CORRECTIONS = Counter(
    "cgm_clock_corrections_total", "Clock corrections attempted, by result", ["result"]
)
CLOCK_REFERENCE_OK = Gauge(
    "cgm_clock_reference_ok",
    "1 when the CGM's own clock was last shown to be on official time (meters may be set)",
)
INTERVALS_STORED = Counter(
    "cgm_intervals_stored_total", "Reading values stored (new or new version)", ["protocol"]
)
INTERVALS_REFUSED = Counter(
    "cgm_intervals_refused_total",
    "Reading values set aside before storage, by kind: invalid, entry (capture period or "
    "alignment), implausible, not_stored",
    ["kind"],
)
AUTH_REFUSALS = Counter(
    "cgm_auth_refusals_total", "Meter authentications refused, by access level", ["level"]
)
LAST_SUCCESS = Gauge(
    "cgm_meter_last_success_timestamp_seconds",
    "Unix time of the last successful read of a meter",
    ["meter", "frontier"],
)
METERS_OVERDUE = Gauge(
    "cgm_meters_overdue", "Meters without a successful read for more than two cycles"
)
METERS_BACKED_OFF = Gauge(
    "cgm_meters_backed_off", "Meters skipped this cycle after repeated failures"
)
CYCLE_SECONDS = Gauge("cgm_cycle_duration_seconds", "Duration of the last collection cycle")
DRIVER_EVENTS = Counter(
    "cgm_driver_events_total",
    "Anomalies a driver handled in a session: list_fallback (GET-with-list abandoned for a "
    "meter), rollover, reset, gap (cumulative registers), unauthenticated_answer (MQTT: an "
    "answer refused, logged with its meter), ...",
    ["protocol", "kind"],
)
CONFIG_VIOLATIONS = Counter(
    "cgm_config_violations_total", "Meter configuration findings (capture period, depth)"
)

# --- ASIC reporting (cgm.reporting) ------------------------------------------------------
ASIC_DOCUMENTS = Counter(
    "cgm_asic_documents_total",
    "ASIC documents by outcome: sent (accepted for processing), success, success_warning, "
    "rejected, transport_failed, late (correction outside the window)",
    ["result"],
)
ASIC_PENDING = Gauge(
    "cgm_asic_documents_pending", "ASIC documents built and not final (to upload or processing)"
)
ASIC_DEADLINE_SECONDS = Gauge(
    "cgm_asic_deadline_seconds",
    "Seconds left to the ASIC deadline for yesterday's readings (negative: passed)",
)
ASIC_UNREPORTED = Gauge(
    "cgm_asic_frontiers_unreported",
    "Frontiers without an accepted principal document for yesterday",
)
ASIC_REQUESTS = Counter(
    "cgm_asic_requests_total",
    "HTTP requests to the ASIC by operation and outcome",
    ["operation", "outcome"],
)

# --- VEE (cgm.vee) -------------------------------------------------------------------------
VEE_VALUES_WRITTEN = Counter(
    "cgm_vee_values_written_total",
    "Settled values stored as new or as a new version, by source",
    ["source"],
)
VEE_FLAGS = Counter(
    "cgm_vee_rule_flags_total", "Intervals flagged by a validation rule (per run)", ["rule"]
)
VEE_RUN_SECONDS = Gauge("cgm_vee_run_duration_seconds", "Duration of the last VEE run of a day")
VEE_ESTIMATED_HOURS = Gauge(
    "cgm_vee_estimated_hours",
    "Hours a channel has been estimated without a break, up to the last day settled",
    ["frontier", "channel"],
)
VEE_PROLONGED_ALARMS = Counter(
    "cgm_vee_prolonged_estimation_alarms_total",
    "Channels estimated for longer than the configured limit (alarm in the hoja de vida)",
)
PORTAL_PUSHES = Counter(
    "cgm_portal_pushes_total",
    "Daily consumption pushes to the consumption portal, by outcome "
    "(delivered, rejected, pending = not delivered after the retries)",
    ["result"],
)
PORTAL_PUSH_FAILURES = Counter(
    "cgm_portal_push_failures_total",
    "Failed push attempts to the consumption portal: transient (retried) or rejected",
    ["kind"],
)
PORTAL_PUSH_LAG = Gauge(
    "cgm_portal_push_lag_seconds",
    "Seconds from the end of the last day delivered to the portal until its delivery",
)
