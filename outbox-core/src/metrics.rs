//! Metric names, recorded through the `metrics` facade. Install any exporter
//! (e.g. `metrics-exporter-prometheus`) to collect them; with none installed they cost nothing.

/// Counter: messages the broker acknowledged (label `engine`).
pub const PUBLISHED: &str = "outbox_published_total";
/// Counter: acknowledgements flagged duplicate by the broker's dedup.
pub const DUPLICATES: &str = "outbox_duplicates_total";
/// Counter: failed publishes scheduled for retry.
pub const RETRIED: &str = "outbox_retried_total";
/// Counter: messages moved to the dead-letter state.
pub const DEAD_LETTERED: &str = "outbox_dead_lettered_total";
/// Counter: notices dropped because the notice channel was full.
pub const NOTICES_DROPPED: &str = "outbox_notices_dropped_total";
/// Counter: ids the listener stopped retrying (too many tries, too old, or too many waiting);
/// the fallback sweeps them.
pub const DEFERRED_DROPPED: &str = "outbox_listener_deferred_dropped_total";
/// Counter: published messages whose claim had been lost before completion (a likely duplicate).
pub const LOST_CLAIMS: &str = "outbox_lost_claims_total";
/// Counter: store or notifier errors seen by the engines (label `op`).
pub const ERRORS: &str = "outbox_errors_total";
/// Histogram: messages per published batch (label `engine`).
pub const BATCH_SIZE: &str = "outbox_batch_size";
/// Histogram: seconds from claim to completion of a batch (label `engine`).
pub const BATCH_SECONDS: &str = "outbox_batch_duration_seconds";
/// Gauge: age in seconds of the oldest pending message (refreshed every `fallback.stats_interval`).
pub const OLDEST_PENDING_AGE: &str = "outbox_oldest_pending_age_seconds";
/// Gauge: pending messages (refreshed every `fallback.stats_interval`).
pub const PENDING: &str = "outbox_pending";
/// Gauge: dead letters (refreshed every `fallback.stats_interval`).
pub const DEAD: &str = "outbox_dead";
