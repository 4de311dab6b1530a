//! A store decorator that records what the relay asks of the store, and when.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use outbox::sea_orm::SqlStore;
use outbox::{Failure, Lease, MessageId, NewMessage, OutboxMessage, OutboxStats, OutboxStore, Result};

/// When each message id was seen.
pub(crate) type Stamps = Arc<Mutex<HashMap<MessageId, Instant>>>;

/// Locks `stamps`, even after a panic elsewhere.
pub(crate) fn lock(stamps: &Stamps) -> MutexGuard<'_, HashMap<MessageId, Instant>> {
    stamps.lock().unwrap_or_else(|e| e.into_inner())
}

/// An [`OutboxStore`] decorator around a [`SqlStore`] that logs every call (when, which
/// method), when the listener asked `claim_ids` for each message and when it got it.
#[derive(Debug)]
pub(crate) struct ProbeStore {
    inner: SqlStore,
    pub(crate) calls: Mutex<Vec<(Instant, &'static str)>>,
    pub(crate) claimed: Stamps,
    /// When `claim_ids` was called for each id (before its statement went out).
    pub(crate) asked: Stamps,
}

impl ProbeStore {
    /// Wraps `inner`.
    pub(crate) fn new(inner: SqlStore) -> Self {
        Self { inner, calls: Mutex::default(), claimed: Stamps::default(), asked: Stamps::default() }
    }

    fn hit(&self, method: &'static str) {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).push((Instant::now(), method));
    }
}

#[async_trait]
impl OutboxStore for ProbeStore {
    async fn enqueue(&self, m: Vec<NewMessage>) -> Result<Vec<MessageId>> {
        self.hit("enqueue");
        self.inner.enqueue(m).await
    }
    async fn claim_ids(&self, ids: &[MessageId], l: &Lease) -> Result<Vec<OutboxMessage>> {
        self.hit("claim_ids");
        let asked = Instant::now();
        {
            let mut stamps = lock(&self.asked);
            for id in ids {
                stamps.entry(*id).or_insert(asked);
            }
        }
        let claimed = self.inner.claim_ids(ids, l).await?;
        let now = Instant::now();
        let mut stamps = lock(&self.claimed);
        for m in &claimed {
            stamps.entry(m.id).or_insert(now);
        }
        Ok(claimed)
    }
    async fn claim_due(&self, n: usize, age: Duration, l: &Lease) -> Result<Vec<OutboxMessage>> {
        self.hit("claim_due");
        self.inner.claim_due(n, age, l).await
    }
    async fn complete(&self, ids: &[MessageId], l: &Lease) -> Result<u64> {
        self.hit("complete");
        self.inner.complete(ids, l).await
    }
    async fn fail(&self, f: &[Failure], l: &Lease) -> Result<()> {
        self.hit("fail");
        self.inner.fail(f, l).await
    }
    async fn stats(&self) -> Result<OutboxStats> {
        self.hit("stats");
        self.inner.stats().await
    }
    fn relay_started(&self) {
        self.inner.relay_started();
    }
    async fn relay_stopped(&self) {
        self.inner.relay_stopped().await;
    }
}
