//! The core NATS bus: fire and flush, at most once.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use outbox_core::{Bus, Error, OutboxMessage, PublishOutcome, Result};

use crate::config::SubjectMapping;
use crate::message::{oversized, prepare};

/// Publishes to core NATS and flushes once per batch: **at most once** (no broker ack, no
/// dedup, nothing stored). A message is `Published` once the flush returns, which only means the
/// server has received it: a subscriber that is not connected never sees it. Use it for
/// notifications that may be lost; use the JetStream bus when they may not.
///
/// Outcomes: a message over the server's `max_payload` or with an invalid subject or header is
/// `Permanent` (alone); a failed or late flush makes the whole batch `Retryable`.
#[derive(Clone, Debug)]
pub struct CoreNatsBus {
    client: async_nats::Client,
    subjects: SubjectMapping,
    timeout: Duration,
}

impl CoreNatsBus {
    /// A bus on `client` with the given subject rule and a 5 s batch timeout.
    pub fn new(client: async_nats::Client, subjects: SubjectMapping) -> Self {
        Self { client, subjects, timeout: Duration::from_secs(5) }
    }

    /// The deadline for one batch, queueing and flush together (default 5 s; above 0, else
    /// `nats.core_timeout`). Past it every message of the batch that has not failed
    /// permanently is `Retryable`, also those already queued: the client may still send them
    /// after a reconnect, so a retry can deliver one twice. Without a deadline a batch would
    /// wait for the reconnect, since a disconnected client only buffers.
    pub fn timeout(mut self, timeout: Duration) -> Result<Self> {
        if timeout.is_zero() {
            return Err(Error::config("nats.core_timeout", "must be above 0"));
        }
        self.timeout = timeout;
        Ok(self)
    }

    async fn send(&self, msg: &OutboxMessage) -> PublishOutcome {
        use async_nats::client::PublishErrorKind as Kind;
        let (subject, headers) = match prepare(&self.subjects, msg) {
            Ok(prepared) => prepared,
            Err(reason) => return PublishOutcome::Permanent(reason),
        };
        if let Some(reason) = oversized(&self.client, &headers, &msg.payload) {
            return PublishOutcome::Permanent(reason);
        }
        match self.client.publish_with_headers(subject, headers, Bytes::copy_from_slice(&msg.payload)).await {
            Ok(()) => PublishOutcome::Published,
            Err(e) if matches!(e.kind(), Kind::MaxPayloadExceeded | Kind::InvalidSubject) => {
                PublishOutcome::Permanent(format!("NATS refused the message: {e}"))
            }
            Err(e) => PublishOutcome::Retryable(format!("NATS publish failed: {e}")),
        }
    }
}

#[async_trait]
impl Bus for CoreNatsBus {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<PublishOutcome> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut outcomes = Vec::with_capacity(batch.len());
        for msg in batch {
            // Only queues the message in the client: no round trip per message.
            let outcome = tokio::time::timeout_at(deadline, self.send(msg)).await.unwrap_or_else(|_| {
                PublishOutcome::Retryable(format!("NATS publish not queued within {:?}", self.timeout))
            });
            outcomes.push(outcome);
        }
        if !outcomes.iter().any(PublishOutcome::is_delivered) {
            return outcomes;
        }
        let flushed = match tokio::time::timeout_at(deadline, self.client.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("NATS flush failed: {e}")),
            Err(_) => Err(format!("NATS flush did not finish within {:?}", self.timeout)),
        };
        if let Err(reason) = flushed {
            for o in outcomes.iter_mut().filter(|o| o.is_delivered()) {
                *o = PublishOutcome::Retryable(reason.clone());
            }
        }
        outcomes
    }
}
