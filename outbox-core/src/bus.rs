//! The broker side: publish a batch and say, per message, what happened.

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;

use crate::message::OutboxMessage;

/// The result of publishing one message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishOutcome {
    /// The broker acknowledged the message.
    Published,
    /// The broker acknowledged it as a duplicate of one it already holds (dedup id matched):
    /// as good as published, and counted.
    Duplicate,
    /// It may succeed later (timeout, no connection): retried with backoff.
    Retryable(String),
    /// The broker asked to be retried no sooner than `delay` (HTTP 429 with `Retry-After`,
    /// a throttling reply): retried after at least `delay`, and counted as a failed attempt.
    RetryAfter {
        /// The earliest retry the broker accepts.
        delay: Duration,
        /// What the broker said, kept as `last_error`.
        error: String,
    },
    /// It will never succeed as is (too large, rejected destination): dead-lettered at once.
    Permanent(String),
}

impl PublishOutcome {
    /// Whether the broker holds the message.
    pub fn is_delivered(&self) -> bool {
        matches!(self, Self::Published | Self::Duplicate)
    }
}

/// A message broker.
///
/// `publish` returns exactly one outcome per message, in batch order. It should pipeline the
/// batch (send all, then await acks) rather than await each message. A batch holds at most one
/// message per key, so the messages may go out in any order or in parallel. Every message must
/// carry [`OutboxMessage::broker_headers`] (its id, topic, key and own headers); brokers with
/// dedup should use the message id as the dedup id.
///
/// ```
/// use async_trait::async_trait;
/// use outbox_core::{Bus, OutboxMessage, PublishOutcome};
///
/// /// Prints each message; a stand-in for a real broker.
/// #[derive(Debug)]
/// struct StdoutBus;
///
/// #[async_trait]
/// impl Bus for StdoutBus {
///     async fn publish(&self, batch: &[OutboxMessage]) -> Vec<PublishOutcome> {
///         batch.iter().map(|m| {
///             println!("{} {}", m.topic, String::from_utf8_lossy(&m.payload));
///             PublishOutcome::Published
///         }).collect()
///     }
/// }
/// ```
#[async_trait]
pub trait Bus: Send + Sync + Debug + 'static {
    /// Publishes `batch`, returning one outcome per message in the same order.
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<PublishOutcome>;
}
