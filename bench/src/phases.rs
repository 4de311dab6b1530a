//! `--phases`: where a drain's relays spent their time, claiming, publishing and settling,
//! through a store and a bus decorator that time each call.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use outbox::{
    Bus, Failure, Lease, MessageId, NewMessage, OutboxMessage, OutboxStats, OutboxStore, PublishOutcome, Result,
};

/// Totals over every relay of one drain.
#[derive(Debug, Default)]
pub(crate) struct Phases {
    claim_ns: AtomicU64,
    claims: AtomicU64,
    empty_claims: AtomicU64,
    claimed: AtomicU64,
    publish_ns: AtomicU64,
    publishes: AtomicU64,
    settle_ns: AtomicU64,
    settles: AtomicU64,
}

impl Phases {
    /// Forgets what was counted so far (claims before the backlog).
    pub(crate) fn reset(&self) {
        for counter in [
            &self.claim_ns,
            &self.claims,
            &self.empty_claims,
            &self.claimed,
            &self.publish_ns,
            &self.publishes,
            &self.settle_ns,
            &self.settles,
        ] {
            counter.store(0, Relaxed);
        }
    }

    /// One line: calls, mean batch, and mean and total time of each phase.
    pub(crate) fn print(&self, label: &str, wall: Duration) {
        let ms = |a: &AtomicU64| a.load(Relaxed) as f64 / 1e6;
        let calls = |a: &AtomicU64| a.load(Relaxed).max(1) as f64;
        println!(
            "phases, {label}: {:.0} ms; {} claims ({} empty), {:.0} messages each; claim {:.1} ms each ({:.0} in all), \
             publish {:.1} ms ({:.0}), settle {:.1} ms ({:.0})",
            wall.as_secs_f64() * 1000.0,
            self.claims.load(Relaxed),
            self.empty_claims.load(Relaxed),
            self.claimed.load(Relaxed) as f64 / calls(&self.claims),
            ms(&self.claim_ns) / calls(&self.claims),
            ms(&self.claim_ns),
            ms(&self.publish_ns) / calls(&self.publishes),
            ms(&self.publish_ns),
            ms(&self.settle_ns) / calls(&self.settles),
            ms(&self.settle_ns),
        );
    }
}

fn add_since(total: &AtomicU64, start: Instant) {
    total.fetch_add(u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX), Relaxed);
}

/// Times `claim_due` and `complete` of the store it wraps.
#[derive(Debug)]
pub(crate) struct TimedStore<S> {
    pub(crate) inner: S,
    pub(crate) phases: Arc<Phases>,
}

#[async_trait]
impl<S: OutboxStore> OutboxStore for TimedStore<S> {
    async fn enqueue(&self, messages: Vec<NewMessage>) -> Result<Vec<MessageId>> {
        self.inner.enqueue(messages).await
    }
    async fn claim_ids(&self, ids: &[MessageId], lease: &Lease) -> Result<Vec<OutboxMessage>> {
        self.inner.claim_ids(ids, lease).await
    }
    async fn retryable_among(&self, ids: &[MessageId]) -> Result<Vec<MessageId>> {
        self.inner.retryable_among(ids).await
    }
    async fn claim_due(&self, limit: usize, min_age: Duration, lease: &Lease) -> Result<Vec<OutboxMessage>> {
        let start = Instant::now();
        let claimed = self.inner.claim_due(limit, min_age, lease).await;
        add_since(&self.phases.claim_ns, start);
        self.phases.claims.fetch_add(1, Relaxed);
        if let Ok(batch) = &claimed {
            self.phases.claimed.fetch_add(batch.len() as u64, Relaxed);
            if batch.is_empty() {
                self.phases.empty_claims.fetch_add(1, Relaxed);
            }
        }
        claimed
    }
    async fn complete(&self, ids: &[MessageId], lease: &Lease) -> Result<u64> {
        let start = Instant::now();
        let done = self.inner.complete(ids, lease).await;
        add_since(&self.phases.settle_ns, start);
        self.phases.settles.fetch_add(1, Relaxed);
        done
    }
    async fn release(&self, ids: &[MessageId], lease: &Lease) -> Result<()> {
        self.inner.release(ids, lease).await
    }
    async fn fail(&self, failures: &[Failure], lease: &Lease) -> Result<()> {
        self.inner.fail(failures, lease).await
    }
    async fn stats(&self) -> Result<OutboxStats> {
        self.inner.stats().await
    }
    fn relay_started(&self) {
        self.inner.relay_started();
    }
    async fn relay_stopped(&self) {
        self.inner.relay_stopped().await;
    }
}

/// Times `publish` of the bus it wraps.
#[derive(Debug)]
pub(crate) struct TimedBus {
    pub(crate) inner: Arc<dyn Bus>,
    pub(crate) phases: Arc<Phases>,
}

#[async_trait]
impl Bus for TimedBus {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<PublishOutcome> {
        let start = Instant::now();
        let outcomes = self.inner.publish(batch).await;
        add_since(&self.phases.publish_ns, start);
        self.phases.publishes.fetch_add(1, Relaxed);
        outcomes
    }
}
