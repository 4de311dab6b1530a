//! A webhook [`Bus`]: each message is an HTTP POST. Copy it as the start of your own bus.
//!
//! 2xx is published; 408 (request timeout) and 429 (too many requests) are retried, no sooner
//! than the `Retry-After` header says when it is given in seconds; other 4xx are permanent (the
//! endpoint will never accept the message as is, so it is dead-lettered with the status); 5xx,
//! timeouts and connection errors are retryable.
//!
//! ```no_run
//! # async fn run() -> outbox::Result<()> {
//! use std::sync::Arc;
//! let bus = custom_bus::WebhookBus::new("http://127.0.0.1:8080/hook", std::time::Duration::from_secs(5))?;
//! let relay = outbox::Relay::builder(Arc::new(outbox::MemoryStore::new()), Arc::new(bus)).build()?.spawn();
//! # relay.shutdown().await }
//! ```

use std::time::Duration;

use async_trait::async_trait;
use outbox::{Bus, OutboxMessage, PublishOutcome};

/// POSTs each message to one URL, with the broker headers as HTTP headers.
#[derive(Clone, Debug)]
pub struct WebhookBus {
    client: reqwest::Client,
    url: String,
}

impl WebhookBus {
    /// A bus posting to `url`, giving up on a request after `timeout`.
    pub fn new(url: impl Into<String>, timeout: Duration) -> outbox::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| outbox::Error::config("webhook.client", e.to_string()))?;
        Ok(Self { client, url: url.into() })
    }

    async fn post(&self, msg: &OutboxMessage) -> PublishOutcome {
        let mut request = self.client.post(&self.url).body(msg.payload.clone());
        for (name, value) in msg.broker_headers() {
            request = request.header(name, value.as_ref());
        }
        match request.send().await {
            Ok(r) if r.status().is_success() => PublishOutcome::Published,
            Ok(r) if is_throttled(r.status()) => {
                let error = format!("{} answered HTTP {}", self.url, r.status());
                match retry_after(r.headers()) {
                    Some(delay) => PublishOutcome::RetryAfter { delay, error },
                    None => PublishOutcome::Retryable(error),
                }
            }
            Ok(r) if r.status().is_client_error() => {
                PublishOutcome::Permanent(format!("{} rejected the message: HTTP {}", self.url, r.status()))
            }
            Ok(r) => PublishOutcome::Retryable(format!("{} answered HTTP {}", self.url, r.status())),
            Err(e) if e.is_builder() => PublishOutcome::Permanent(format!("cannot build the request: {e}")),
            Err(e) => PublishOutcome::Retryable(format!("POST {} failed: {e}", self.url)),
        }
    }
}

/// 408 and 429 say "not now", not "never".
fn is_throttled(status: reqwest::StatusCode) -> bool {
    matches!(status, reqwest::StatusCode::REQUEST_TIMEOUT | reqwest::StatusCode::TOO_MANY_REQUESTS)
}

/// `Retry-After: <seconds>`. The HTTP-date form is rare for webhooks; without a date parser it
/// falls back to the relay's own backoff.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[async_trait]
impl Bus for WebhookBus {
    /// All requests of the batch run concurrently: one slow endpoint round trip per batch,
    /// not per message.
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<PublishOutcome> {
        futures::future::join_all(batch.iter().map(|m| self.post(m))).await
    }
}
