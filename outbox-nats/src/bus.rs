//! NATS headers for a message, and the core NATS bus (fire and flush).

use std::str::FromStr;

use async_nats::{HeaderMap, HeaderName};
use async_trait::async_trait;
use bytes::Bytes;
use outbox_core::{Bus, OutboxMessage, PublishOutcome};

use crate::config::{SubjectMapping, invalid_subject};

/// The header JetStream deduplicates on.
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";

/// NATS headers for `msg`: its id, topic, key and own headers. A header NATS cannot carry is
/// a permanent failure (it would never go through).
pub fn nats_headers(msg: &OutboxMessage) -> std::result::Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    for (name, value) in msg.broker_headers() {
        let header = HeaderName::from_str(name).map_err(|_| format!("header name `{name}` is not valid in NATS"))?;
        if value.contains(['\r', '\n']) {
            return Err(format!("header `{name}` has a line break, which NATS cannot carry"));
        }
        headers.insert(header, value.as_ref());
    }
    Ok(headers)
}

/// Publishes to core NATS and flushes once per batch: **at most once** (no broker ack, no
/// dedup, nothing stored). A message is `Published` once the flush returns. Use it for
/// notifications that may be lost; use [`JetStreamBus`] when they may not.
#[derive(Clone, Debug)]
pub struct CoreNatsBus {
    client: async_nats::Client,
    subjects: SubjectMapping,
}

impl CoreNatsBus {
    /// A bus on `client` with the given subject rule.
    pub fn new(client: async_nats::Client, subjects: SubjectMapping) -> Self {
        Self { client, subjects }
    }
}

#[async_trait]
impl Bus for CoreNatsBus {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<PublishOutcome> {
        let max_payload = self.client.server_info().max_payload;
        let mut outcomes = Vec::with_capacity(batch.len());
        for msg in batch {
            let subject = self.subjects.subject(msg);
            let outcome = match (invalid_subject(&subject), nats_headers(msg)) {
                (Some(reason), _) | (None, Err(reason)) => PublishOutcome::Permanent(reason),
                (None, Ok(_)) if msg.payload.len() > max_payload => PublishOutcome::Permanent(format!(
                    "payload of {} bytes exceeds the server's max_payload of {max_payload} bytes",
                    msg.payload.len()
                )),
                (None, Ok(headers)) => {
                    match self.client.publish_with_headers(subject, headers, Bytes::copy_from_slice(&msg.payload)).await
                    {
                        Ok(()) => PublishOutcome::Published,
                        Err(e) => PublishOutcome::Retryable(format!("NATS publish failed: {e}")),
                    }
                }
            };
            outcomes.push(outcome);
        }
        if let Err(e) = self.client.flush().await {
            for o in outcomes.iter_mut().filter(|o| o.is_delivered()) {
                *o = PublishOutcome::Retryable(format!("NATS flush failed: {e}"));
            }
        }
        outcomes
    }
}
