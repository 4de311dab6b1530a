//! Settings of a consumer runner, validated when it is built.

use std::time::Duration;

use crate::config::RetryPolicy;
use crate::error::{Error, Result};

/// Settings shared by the consumer runners.
///
/// ```
/// use std::time::Duration;
/// use outbox_core::consumer::ConsumerConfig;
///
/// let config = ConsumerConfig::default().concurrency(8).per_key(true).max_deliveries(5);
/// config.validate().unwrap();
/// let err = ConsumerConfig::default().batch(0).validate().unwrap_err();
/// assert!(err.to_string().contains("`consumer.batch`"));
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ConsumerConfig {
    /// Messages fetched per request. Default 64; 1 to 10 000.
    pub batch: usize,
    /// Handlers running at once. Default 16; at least 1.
    pub concurrency: usize,
    /// Messages of one key (`Outbox-Key`) are handled one after another, in delivery order;
    /// different keys, and messages without a key, still run in parallel. Default `false`.
    pub per_key: bool,
    /// Deliveries before a message that keeps failing is dead-lettered. Default 5; at least 1.
    pub max_deliveries: u64,
    /// Delay before each redelivery of a failed message (`initial_backoff`, `max_backoff`,
    /// `factor`, `jitter`; its `max_attempts` is not used: see
    /// [`max_deliveries`](Self::max_deliveries)). Default [`RetryPolicy::default`].
    pub backoff: RetryPolicy,
    /// How long a fetch waits for messages when there are none. Default 1 s; above 0.
    pub fetch_wait: Duration,
    /// How long the broker waits for an acknowledgement before it redelivers. Default 30 s;
    /// above 0. A handler must finish well within it.
    pub ack_wait: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            batch: 64,
            concurrency: 16,
            per_key: false,
            max_deliveries: 5,
            backoff: RetryPolicy::default(),
            fetch_wait: Duration::from_secs(1),
            ack_wait: Duration::from_secs(30),
        }
    }
}

impl ConsumerConfig {
    /// Sets [`ConsumerConfig::batch`].
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n;
        self
    }
    /// Sets [`ConsumerConfig::concurrency`].
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }
    /// Sets [`ConsumerConfig::per_key`].
    pub fn per_key(mut self, on: bool) -> Self {
        self.per_key = on;
        self
    }
    /// Sets [`ConsumerConfig::max_deliveries`].
    pub fn max_deliveries(mut self, n: u64) -> Self {
        self.max_deliveries = n;
        self
    }
    /// Sets [`ConsumerConfig::backoff`].
    pub fn backoff(mut self, policy: RetryPolicy) -> Self {
        self.backoff = policy;
        self
    }
    /// Sets [`ConsumerConfig::fetch_wait`].
    pub fn fetch_wait(mut self, d: Duration) -> Self {
        self.fetch_wait = d;
        self
    }
    /// Sets [`ConsumerConfig::ack_wait`].
    pub fn ack_wait(mut self, d: Duration) -> Self {
        self.ack_wait = d;
        self
    }

    /// Checks every field; the error names the bad one and what is allowed.
    pub fn validate(&self) -> Result<()> {
        if !(1..=10_000).contains(&self.batch) {
            return Err(Error::config("consumer.batch", format!("must be 1 to 10000, got {}", self.batch)));
        }
        if self.concurrency == 0 {
            return Err(Error::config("consumer.concurrency", "must be at least 1, got 0"));
        }
        if self.max_deliveries == 0 {
            return Err(Error::config("consumer.max_deliveries", "must be at least 1, got 0"));
        }
        if self.fetch_wait.is_zero() {
            return Err(Error::config("consumer.fetch_wait", "must be above 0"));
        }
        if self.ack_wait.is_zero() {
            return Err(Error::config("consumer.ack_wait", "must be above 0"));
        }
        if self.backoff.initial_backoff.is_zero() || self.backoff.max_backoff < self.backoff.initial_backoff {
            return Err(Error::config(
                "consumer.backoff",
                "initial_backoff must be above 0 and max_backoff at least initial_backoff",
            ));
        }
        Ok(())
    }

    /// The delay before redelivery number `attempt` (1 = after the first failure).
    pub fn retry_delay(&self, attempt: u64) -> Duration {
        self.backoff.delay_for(u32::try_from(attempt).unwrap_or(u32::MAX))
    }
}
