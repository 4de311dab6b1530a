//! One claimed batch: publish it, then complete, retry or dead-letter each message.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use futures::FutureExt;
use tracing::Instrument;

use crate::bus::{Bus, PublishOutcome};
use crate::config::RetryPolicy;
use crate::error::Result;
use crate::message::{MessageId, OutboxMessage};
use crate::metrics as m;
use crate::store::{Disposition, Failure, Lease, OutboxStore};

/// Which engine ran a batch (a metrics label and a span field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Engine {
    Listener,
    Fallback,
}

impl Engine {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Listener => "listener",
            Self::Fallback => "fallback",
        }
    }
}

/// Running totals for one relay, readable while it runs (see [`RelayHandle::stats`](crate::RelayHandle::stats)).
#[derive(Debug, Default)]
pub struct RelayStats {
    published: AtomicU64,
    duplicates: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    lost_claims: AtomicU64,
    batches: AtomicU64,
    errors: AtomicU64,
}

macro_rules! getters {
    ($($(#[$doc:meta])* $name:ident),*) => {
        impl RelayStats {
            $($(#[$doc])* pub fn $name(&self) -> u64 { self.$name.load(Ordering::Relaxed) })*
        }
    };
}

getters!(
    /// Messages the broker acknowledged (duplicates included).
    published,
    /// Acknowledgements the broker flagged as duplicates.
    duplicates,
    /// Failures scheduled for retry.
    retried,
    /// Messages dead-lettered.
    dead_lettered,
    /// Published messages whose claim had expired before completion (likely duplicates).
    lost_claims,
    /// Batches processed.
    batches,
    /// Store or notifier errors.
    errors
);

impl RelayStats {
    pub(crate) fn error(&self, op: &'static str, err: &crate::Error) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::ERRORS, "op" => op).increment(1);
        tracing::warn!(op, error = %err, temporary = err.is_temporary(), "outbox relay error");
    }
}

/// What the engines share: the store, the bus and the rules for failures.
#[derive(Debug)]
pub(crate) struct Pipeline {
    pub(crate) store: Arc<dyn OutboxStore>,
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) retry: RetryPolicy,
    pub(crate) claim_ttl: Duration,
    pub(crate) stats: Arc<RelayStats>,
}

impl Pipeline {
    pub(crate) fn lease(&self) -> Lease {
        Lease::new(self.claim_ttl)
    }

    /// Publishes a claimed batch and settles every message in it. Store errors while
    /// settling are retried briefly; if they persist, the claim simply expires and the
    /// messages are swept again (at-least-once).
    pub(crate) async fn process(&self, engine: Engine, batch: Vec<OutboxMessage>, lease: &Lease) {
        if batch.is_empty() {
            return;
        }
        let span = tracing::info_span!(
            "outbox.batch",
            engine = engine.as_str(),
            size = batch.len(),
            published = tracing::field::Empty,
            retried = tracing::field::Empty,
            dead = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
        );
        self.process_inner(engine, batch, lease).instrument(span).await
    }

    async fn process_inner(&self, engine: Engine, mut batch: Vec<OutboxMessage>, lease: &Lease) {
        let started = Instant::now();
        let label = engine.as_str();
        let outcomes = self.publish_runs(&mut batch).await;

        let mut delivered: Vec<MessageId> = Vec::with_capacity(batch.len());
        let mut failures: Vec<Failure> = Vec::new();
        let mut held_back: Vec<MessageId> = Vec::new();
        let mut duplicates = 0u64;
        let (mut retried, mut dead) = (0u64, 0u64);
        for (msg, outcome) in batch.iter().zip(outcomes) {
            let Some(outcome) = outcome else {
                held_back.push(msg.id);
                continue;
            };
            match outcome {
                PublishOutcome::Published => delivered.push(msg.id),
                PublishOutcome::Duplicate => {
                    duplicates += 1;
                    delivered.push(msg.id);
                }
                PublishOutcome::Retryable(error) => {
                    let failure = self.retry_or_dead(msg, error, Duration::ZERO);
                    count(&failure, &mut retried, &mut dead);
                    failures.push(failure);
                }
                PublishOutcome::RetryAfter { delay, error } => {
                    let failure = self.retry_or_dead(msg, error, delay);
                    count(&failure, &mut retried, &mut dead);
                    failures.push(failure);
                }
                PublishOutcome::Permanent(error) => {
                    dead += 1;
                    tracing::warn!(id = %msg.id, topic = %msg.topic, %error, "permanent publish failure; dead-lettering");
                    failures.push(Failure { id: msg.id, error, disposition: Disposition::DeadLetter });
                }
            }
        }

        // First, so that a store holding the claim in a transaction drops them from it
        // before the settles below commit it.
        if !held_back.is_empty() {
            tracing::debug!(count = held_back.len(), "releasing messages behind a failed one of their key");
            if let Err(e) = settle(|| self.store.release(&held_back, lease)).await {
                self.stats.error("release", &e);
            }
        }
        if !delivered.is_empty() {
            match settle(|| self.store.complete(&delivered, lease)).await {
                Ok(held) => {
                    let lost = (delivered.len() as u64).saturating_sub(held);
                    if lost > 0 {
                        self.stats.lost_claims.fetch_add(lost, Ordering::Relaxed);
                        metrics::counter!(m::LOST_CLAIMS).increment(lost);
                    }
                }
                Err(e) => self.stats.error("complete", &e),
            }
        }
        if !failures.is_empty()
            && let Err(e) = settle(|| self.store.fail(&failures, lease)).await
        {
            self.stats.error("fail", &e);
        }

        let published = delivered.len() as u64;
        let s = &self.stats;
        s.published.fetch_add(published, Ordering::Relaxed);
        s.duplicates.fetch_add(duplicates, Ordering::Relaxed);
        s.retried.fetch_add(retried, Ordering::Relaxed);
        s.dead_lettered.fetch_add(dead, Ordering::Relaxed);
        s.batches.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::PUBLISHED, "engine" => label).increment(published);
        metrics::counter!(m::DUPLICATES, "engine" => label).increment(duplicates);
        metrics::counter!(m::RETRIED, "engine" => label).increment(retried);
        metrics::counter!(m::DEAD_LETTERED, "engine" => label).increment(dead);
        metrics::histogram!(m::BATCH_SIZE, "engine" => label).record(batch.len() as f64);
        let elapsed = started.elapsed();
        metrics::histogram!(m::BATCH_SECONDS, "engine" => label).record(elapsed.as_secs_f64());
        let span = tracing::Span::current();
        span.record("published", published);
        span.record("retried", retried);
        span.record("dead", dead);
        span.record("duration_ms", elapsed.as_millis() as u64);
    }
}

impl Pipeline {
    /// How long one publish may take: half the claim ttl, so that its failure is recorded
    /// while the claim still holds (a later `fail` finds the claim gone and counts nothing,
    /// and the message would loop for ever) and the other half is left for settling.
    pub(crate) fn publish_deadline(&self) -> Duration {
        self.claim_ttl / 2
    }

    /// Publishes a batch in `seq` order that may hold runs of a key, one message per key at
    /// a time: it is reordered into waves, the n-th message of each key in wave n (messages
    /// without a key in the first), and each wave goes to the bus once the one before it is
    /// acknowledged. A key whose message failed sends nothing more: its later messages get
    /// no outcome (`None`), to be released. A batch of heads is one wave, one bus call.
    async fn publish_runs(&self, batch: &mut Vec<OutboxMessage>) -> Vec<Option<PublishOutcome>> {
        let deadline = tokio::time::Instant::now() + self.publish_deadline();
        let waves = into_waves(batch);
        if waves.len() <= 1 {
            return self.publish(batch, deadline).await.into_iter().map(Some).collect();
        }
        let mut outcomes: Vec<Option<PublishOutcome>> = vec![None; batch.len()];
        let mut stopped: HashSet<String> = HashSet::new();
        for wave in waves {
            let stops = |m: &OutboxMessage| m.key.as_ref().is_some_and(|k| stopped.contains(k));
            let live: Vec<usize> = wave.filter(|&i| !stops(&batch[i])).collect();
            let published = match (live.first(), live.last()) {
                (Some(&first), Some(&last)) if last - first + 1 == live.len() => {
                    self.publish(&batch[first..=last], deadline).await
                }
                (Some(_), _) => {
                    let some: Vec<OutboxMessage> = live.iter().map(|&i| batch[i].clone()).collect();
                    self.publish(&some, deadline).await
                }
                (None, _) => continue,
            };
            for (i, outcome) in live.into_iter().zip(published) {
                if !outcome.is_delivered()
                    && let Some(key) = &batch[i].key
                {
                    stopped.insert(key.clone());
                }
                outcomes[i] = Some(outcome);
            }
        }
        outcomes
    }

    /// The bus's outcomes, one per message, whatever the bus does: a publish past the
    /// deadline is a retryable failure of the whole batch; a panicking bus is asked again
    /// message by message, so only the message it panics on fails (permanently: a panic is
    /// a bug, not weather).
    async fn publish(&self, batch: &[OutboxMessage], deadline: tokio::time::Instant) -> Vec<PublishOutcome> {
        match self.publish_guarded(batch, deadline).await {
            Guarded::Done(outcomes) => outcomes,
            Guarded::Panicked(reason) if batch.len() == 1 => vec![panicked(&reason)],
            Guarded::Panicked(reason) => {
                tracing::error!(size = batch.len(), %reason, "the bus panicked; publishing this batch one by one");
                let mut outcomes = Vec::with_capacity(batch.len());
                for msg in batch {
                    outcomes.push(match self.publish_guarded(std::slice::from_ref(msg), deadline).await {
                        Guarded::Done(mut one) => one.remove(0),
                        Guarded::Panicked(reason) => panicked(&reason),
                    });
                }
                outcomes
            }
        }
    }

    async fn publish_guarded(&self, batch: &[OutboxMessage], deadline: tokio::time::Instant) -> Guarded {
        let publish = AssertUnwindSafe(self.bus.publish(batch)).catch_unwind();
        let outcomes = match tokio::time::timeout_at(deadline, publish).await {
            Ok(Ok(outcomes)) => outcomes,
            Ok(Err(panic)) => return Guarded::Panicked(panic_reason(panic.as_ref())),
            Err(_) => {
                let error = format!(
                    "publish did not finish within {:?} (half the claim ttl); the claim would expire before its failure could be recorded",
                    self.publish_deadline()
                );
                tracing::warn!(size = batch.len(), %error, "publish timed out");
                return Guarded::Done(vec![PublishOutcome::Retryable(error); batch.len()]);
            }
        };
        if outcomes.len() != batch.len() {
            tracing::error!(
                expected = batch.len(),
                got = outcomes.len(),
                "bus returned the wrong number of outcomes; retrying the whole batch"
            );
            return Guarded::Done(vec![PublishOutcome::Retryable("bus returned no outcome".into()); batch.len()]);
        }
        Guarded::Done(outcomes)
    }

    /// A failed attempt: retried after the policy's delay (at least `at_least`), or dead once
    /// `max_attempts` is reached.
    fn retry_or_dead(&self, msg: &OutboxMessage, error: String, at_least: Duration) -> Failure {
        let attempt = msg.attempts + 1;
        let disposition = if attempt >= self.retry.max_attempts {
            Disposition::DeadLetter
        } else {
            Disposition::RetryAfter(self.retry.delay_for(attempt).max(at_least))
        };
        tracing::debug!(id = %msg.id, attempt, %error, "publish failed");
        Failure { id: msg.id, error, disposition }
    }
}

/// Reorders `batch` (in `seq` order) into waves, stably: the n-th message of each key goes
/// to wave n, messages without a key to the first. Returns each wave's index range.
fn into_waves(batch: &mut Vec<OutboxMessage>) -> Vec<std::ops::Range<usize>> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let wave_of: Vec<usize> = batch
        .iter()
        .map(|m| match &m.key {
            Some(key) => {
                let n = seen.entry(key.as_str()).or_default();
                *n += 1;
                *n - 1
            }
            None => 0,
        })
        .collect();
    let waves = wave_of.iter().max().map_or(0, |last| last + 1);
    if waves > 1 {
        let mut tagged: Vec<(usize, OutboxMessage)> = wave_of.iter().copied().zip(batch.drain(..)).collect();
        tagged.sort_by_key(|(wave, _)| *wave);
        batch.extend(tagged.into_iter().map(|(_, m)| m));
    }
    let mut sizes = vec![0usize; waves];
    for w in wave_of {
        sizes[w] += 1;
    }
    let mut start = 0;
    sizes
        .into_iter()
        .map(|n| {
            let range = start..start + n;
            start += n;
            range
        })
        .collect()
}

enum Guarded {
    Done(Vec<PublishOutcome>),
    Panicked(String),
}

fn count(failure: &Failure, retried: &mut u64, dead: &mut u64) {
    match failure.disposition {
        Disposition::DeadLetter => *dead += 1,
        Disposition::RetryAfter(_) => *retried += 1,
    }
}

fn panicked(reason: &str) -> PublishOutcome {
    PublishOutcome::Permanent(format!("the bus panicked while publishing this message: {reason}"))
}

pub(crate) fn panic_reason(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Retries a settling store call a few times on temporary errors: a brief database blip
/// should not turn a published batch into duplicates.
async fn settle<T, F, Fut>(op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    op.retry(
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(1))
            .with_max_times(4)
            .with_jitter(),
    )
    .sleep(tokio::time::sleep)
    .when(|e: &crate::Error| e.is_temporary())
    .await
}
