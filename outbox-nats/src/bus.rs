//! NATS headers for a message, the size check, and the core NATS bus (fire and flush).

use std::str::FromStr;
use std::time::Duration;

use async_nats::{HeaderMap, HeaderName};
use async_trait::async_trait;
use bytes::Bytes;
use outbox_core::{Bus, Error, OutboxMessage, PublishOutcome, Result};

use crate::config::{SubjectMapping, invalid_subject};

/// The header JetStream deduplicates on.
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";

/// NATS headers for `msg`: its id, topic, key and own headers. A header NATS cannot carry is an
/// [`Error::InvalidMessage`]; the buses report it as a permanent failure (it would never go
/// through).
pub fn nats_headers(msg: &OutboxMessage) -> Result<HeaderMap> {
    headers_or_reason(msg).map_err(|reason| Error::invalid_message(msg.id, reason))
}

fn headers_or_reason(msg: &OutboxMessage) -> std::result::Result<HeaderMap, String> {
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

/// The subject and headers for `msg`, or why it can never be published.
pub(crate) fn prepare(
    subjects: &SubjectMapping,
    msg: &OutboxMessage,
) -> std::result::Result<(String, HeaderMap), String> {
    let subject = subjects.subject(msg);
    if let Some(reason) = invalid_subject(&subject) {
        return Err(reason);
    }
    Ok((subject, headers_or_reason(msg)?))
}

/// Why the message can never fit the server's `max_payload`, if it cannot. NATS counts the
/// headers too, so a payload just under the limit can still be refused.
pub(crate) fn oversized(client: &async_nats::Client, headers: &HeaderMap, payload: &[u8]) -> Option<String> {
    let max_payload = client.max_payload();
    let header_bytes = headers_wire_len(headers);
    let size = payload.len() + header_bytes;
    (size > max_payload).then(|| {
        format!(
            "message of {size} bytes (payload {} + headers {header_bytes}) is over the server's max_payload size limit of {max_payload} bytes",
            payload.len()
        )
    })
}

/// Bytes of the `NATS/1.0` header block as sent on the wire.
fn headers_wire_len(headers: &HeaderMap) -> usize {
    const PREAMBLE: usize = "NATS/1.0\r\n".len() + "\r\n".len();
    let fields: usize = headers
        .iter()
        .flat_map(|(name, values)| {
            let name: &str = name.as_ref();
            values.iter().map(move |v| name.len() + ": ".len() + v.as_str().len() + "\r\n".len())
        })
        .sum();
    PREAMBLE + fields
}

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

    /// How long queueing and flushing one batch may take before the messages not yet flushed
    /// are retryable (default 5 s, above 0). While disconnected the client only buffers, so
    /// without a limit a batch would wait for the reconnect.
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
