//! Metric names of the consumer runners, recorded through the `metrics` facade with a
//! `consumer` label (the durable consumer or group name).

/// Counter: messages whose handler ran and whose effects were committed.
pub const CONSUMER_PROCESSED: &str = "outbox_consumer_processed_total";
/// Counter: deliveries skipped because the inbox had already recorded them.
pub const CONSUMER_DUPLICATES: &str = "outbox_consumer_duplicates_total";
/// Counter: failed deliveries handed back to the broker for a later retry.
pub const CONSUMER_RETRIED: &str = "outbox_consumer_retried_total";
/// Counter: deliveries moved to the dead-letter subject or stream.
pub const CONSUMER_DEAD_LETTERED: &str = "outbox_consumer_dead_lettered_total";
