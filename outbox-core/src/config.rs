//! Relay configuration, validated when the relay is built. Every default is documented here
//! and in `docs/configuration.md`.

use std::time::Duration;

use backon::BackoffBuilder;

use crate::error::{Error, Result};

/// Listener engine settings (the low-latency path woken by notices).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ListenerConfig {
    /// Most messages claimed and published as one batch. Default 256; at least 1.
    pub max_batch: usize,
    /// How long to wait for more notices before dispatching a partial batch. Default 0:
    /// dispatch at once with whatever is queued (batches still form naturally under load,
    /// while earlier batches are in flight); must be shorter than the claim TTL.
    pub linger: Duration,
    /// Batches in flight at once. Default 4; at least 1.
    pub concurrency: usize,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self { max_batch: 256, linger: Duration::ZERO, concurrency: 4 }
    }
}

impl ListenerConfig {
    /// Sets [`ListenerConfig::max_batch`].
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n;
        self
    }
    /// Sets [`ListenerConfig::linger`].
    pub fn linger(mut self, d: Duration) -> Self {
        self.linger = d;
        self
    }
    /// Sets [`ListenerConfig::concurrency`].
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }
}

/// Fallback engine settings (the sweep that guarantees nothing is left behind).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct FallbackConfig {
    /// Time between sweeps, jittered by ±10 % so relays spread out. Default 1 s; above 0.
    pub interval: Duration,
    /// A message never attempted is swept only once this old, leaving it to the listener
    /// first. Default 2 s; may be 0.
    pub min_age: Duration,
    /// Messages claimed per batch. Default 500; at least 1.
    pub batch_size: usize,
    /// Batches swept in parallel. Default 2; at least 1.
    pub concurrency: usize,
    /// How often the backlog gauges (`outbox_pending`, `outbox_dead`,
    /// `outbox_oldest_pending_age_seconds`) are refreshed. Counting them scans every pending
    /// and dead row, so each relay does it this often, not after every sweep. Default 15 s;
    /// above 0.
    pub stats_interval: Duration,
}

impl Default for FallbackConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            min_age: Duration::from_secs(2),
            batch_size: 500,
            concurrency: 2,
            stats_interval: Duration::from_secs(15),
        }
    }
}

impl FallbackConfig {
    /// Sets [`FallbackConfig::interval`].
    pub fn interval(mut self, d: Duration) -> Self {
        self.interval = d;
        self
    }
    /// Sets [`FallbackConfig::min_age`].
    pub fn min_age(mut self, d: Duration) -> Self {
        self.min_age = d;
        self
    }
    /// Sets [`FallbackConfig::batch_size`].
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n;
        self
    }
    /// Sets [`FallbackConfig::concurrency`].
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }
    /// Sets [`FallbackConfig::stats_interval`].
    pub fn stats_interval(mut self, d: Duration) -> Self {
        self.stats_interval = d;
        self
    }
}

/// What happens after a failed publish.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts before a message is dead-lettered. Default 10; at least 1.
    pub max_attempts: u32,
    /// Delay before the first retry. Default 200 ms; above 0.
    pub initial_backoff: Duration,
    /// Cap on the delay. Default 60 s; at least `initial_backoff`.
    pub max_backoff: Duration,
    /// Growth per attempt. Default 2.0; at least 1.0.
    pub factor: f32,
    /// Randomise delays so failing relays do not retry in lockstep. Default true.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(60),
            factor: 2.0,
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// Sets [`RetryPolicy::max_attempts`].
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }
    /// Sets [`RetryPolicy::initial_backoff`] and [`RetryPolicy::max_backoff`].
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max;
        self
    }
    /// Sets [`RetryPolicy::jitter`].
    pub fn jitter(mut self, on: bool) -> Self {
        self.jitter = on;
        self
    }
    /// Sets [`RetryPolicy::factor`].
    pub fn factor(mut self, f: f32) -> Self {
        self.factor = f;
        self
    }

    /// The delay before retry number `attempt` (1 = first retry), from `backon`'s
    /// exponential backoff.
    pub fn delay_for(&self, attempt: u32) -> Duration {
        let mut builder = backon::ExponentialBuilder::default()
            .with_min_delay(self.initial_backoff)
            .with_max_delay(self.max_backoff)
            .with_factor(self.factor)
            .with_max_times(attempt as usize);
        if self.jitter {
            builder = builder.with_jitter();
        }
        let delay = builder.build().nth(attempt.saturating_sub(1) as usize).unwrap_or(self.max_backoff);
        // Whole milliseconds: stores keep times in ms, and f32 growth leaves nanosecond noise.
        Duration::from_millis(delay.min(self.max_backoff.saturating_mul(2)).as_millis() as u64)
    }

    /// The longest a message can spend retrying before it is dead-lettered (without jitter).
    pub fn retry_horizon(&self) -> Duration {
        (1..self.max_attempts)
            .map(|a| {
                let exp = self.initial_backoff.as_secs_f64() * f64::from(self.factor).powi(a.saturating_sub(1) as i32);
                Duration::from_secs_f64(exp.min(self.max_backoff.as_secs_f64()))
            })
            .sum()
    }

    /// The longest a message can wait in backoff over all its retries before it is
    /// dead-lettered: the sum of the longest [`delay_for`](Self::delay_for) can return for each
    /// retry. Jitter adds up to 100 % to each delay, so this is up to twice
    /// [`retry_horizon`](Self::retry_horizon). The time the attempts themselves take is not
    /// included. With the defaults it is 204.4 s.
    pub fn worst_case_retry_span(&self) -> Duration {
        let retries = self.max_attempts.saturating_sub(1);
        let mut bases = backon::ExponentialBuilder::default()
            .with_min_delay(self.initial_backoff)
            .with_max_delay(self.max_backoff)
            .with_factor(self.factor)
            .with_max_times(retries as usize)
            .build();
        let (mut total, mut previous) = (Duration::ZERO, None);
        for done in 0..retries {
            let Some(base) = bases.next() else { break };
            if previous == Some(base) {
                // Each base delay depends only on the one before: from here on they repeat.
                return total.saturating_add(self.longest_delay(base).saturating_mul(retries - done));
            }
            total = total.saturating_add(self.longest_delay(base));
            previous = Some(base);
        }
        total
    }

    /// The longest [`delay_for`](Self::delay_for) can make of backon's un-jittered `base`:
    /// backon adds `base` times a random factor below 1, computed the same way here with 1.
    fn longest_delay(&self, base: Duration) -> Duration {
        let jittered = if self.jitter { base.saturating_add(base.mul_f32(1.0)) } else { base };
        Duration::from_millis(jittered.min(self.max_backoff.saturating_mul(2)).as_millis() as u64)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.max_attempts == 0 {
            return Err(Error::config("retry.max_attempts", "must be at least 1"));
        }
        if self.initial_backoff.is_zero() {
            return Err(Error::config("retry.initial_backoff", "must be above 0"));
        }
        if self.max_backoff < self.initial_backoff {
            return Err(Error::config(
                "retry.max_backoff",
                format!("must be at least initial_backoff ({:?})", self.initial_backoff),
            ));
        }
        if !(self.factor >= 1.0 && self.factor.is_finite()) {
            return Err(Error::config("retry.factor", "must be a finite number >= 1.0"));
        }
        Ok(())
    }
}

/// Everything a relay needs besides its store, bus and notifier.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct RelayConfig {
    /// Listener settings; `None` switches the listener off.
    pub listener: Option<ListenerConfig>,
    /// Fallback settings; `None` switches the fallback off (not recommended: lost notices
    /// would then wait for a restart).
    pub fallback: Option<FallbackConfig>,
    /// Failure handling.
    pub retry: RetryPolicy,
    /// How long a claim holds before another relay may take it over. Default 30 s; above 0;
    /// must exceed the listener linger. Set it above your slowest publish.
    pub claim_ttl: Duration,
    /// How long [`RelayHandle::shutdown`](crate::RelayHandle::shutdown) waits for in-flight
    /// batches. Default 10 s.
    pub shutdown_timeout: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            listener: Some(ListenerConfig::default()),
            fallback: Some(FallbackConfig::default()),
            retry: RetryPolicy::default(),
            claim_ttl: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

impl RelayConfig {
    /// Checks every field; the error names the first bad one and its allowed range.
    pub fn validate(&self) -> Result<()> {
        if self.listener.is_none() && self.fallback.is_none() {
            return Err(Error::config("relay.engines", "both listener and fallback are off; enable at least one"));
        }
        if self.claim_ttl.is_zero() {
            return Err(Error::config("relay.claim_ttl", "must be above 0"));
        }
        if let Some(l) = &self.listener {
            if l.max_batch == 0 {
                return Err(Error::config("listener.max_batch", "must be at least 1"));
            }
            if l.concurrency == 0 {
                return Err(Error::config("listener.concurrency", "must be at least 1"));
            }
            if l.linger >= self.claim_ttl {
                return Err(Error::config(
                    "listener.linger",
                    format!("must be shorter than relay.claim_ttl ({:?})", self.claim_ttl),
                ));
            }
        }
        if let Some(f) = &self.fallback {
            if f.interval.is_zero() {
                return Err(Error::config("fallback.interval", "must be above 0"));
            }
            if f.batch_size == 0 {
                return Err(Error::config("fallback.batch_size", "must be at least 1"));
            }
            if f.concurrency == 0 {
                return Err(Error::config("fallback.concurrency", "must be at least 1"));
            }
            if f.stats_interval.is_zero() {
                return Err(Error::config("fallback.stats_interval", "must be above 0"));
            }
        }
        self.retry.validate()
    }
}

#[cfg(test)]
mod retry_span_tests {
    use super::*;

    #[test]
    fn the_worst_case_retry_span_bounds_every_jittered_draw() {
        let policies = [
            RetryPolicy::default(),
            RetryPolicy::default().max_attempts(3).backoff(Duration::from_millis(10), Duration::from_millis(50)),
            RetryPolicy::default().factor(1.5).backoff(Duration::from_millis(333), Duration::from_secs(7)),
            RetryPolicy::default().factor(1.0).max_attempts(5),
            RetryPolicy::default().max_attempts(1),
        ];
        for policy in policies {
            let span = policy.worst_case_retry_span();
            for _ in 0..2_000 {
                let drawn: Duration = (1..policy.max_attempts).map(|a| policy.delay_for(a)).sum();
                assert!(drawn <= span, "{policy:?}: drew {drawn:?} > {span:?}");
            }
            let steady = policy.clone().jitter(false);
            let exact: Duration = (1..steady.max_attempts).map(|a| steady.delay_for(a)).sum();
            assert_eq!(steady.worst_case_retry_span(), exact, "{policy:?} without jitter");
        }
    }

    #[test]
    fn the_default_worst_case_is_twice_the_horizon() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.worst_case_retry_span(), Duration::from_millis(204_400));
        assert_eq!(policy.worst_case_retry_span(), policy.retry_horizon() * 2);
    }

    #[test]
    fn a_huge_attempt_count_is_summed_without_iterating_every_retry() {
        let policy = RetryPolicy::default().max_attempts(u32::MAX);
        assert!(policy.worst_case_retry_span() > Duration::from_secs(120) * 1_000_000);
    }

    #[test]
    fn factor_sets_the_growth() {
        let policy = RetryPolicy::default().factor(3.0).jitter(false);
        assert_eq!(policy.factor, 3.0);
        assert_eq!(policy.delay_for(2), Duration::from_millis(600));
    }
}
