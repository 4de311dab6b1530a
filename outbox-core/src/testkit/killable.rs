//! [`Killable`]: a store that stops answering at the flip of a switch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::message::{MessageId, NewMessage, OutboxMessage};
use crate::store::{Failure, Lease, OutboxStats, OutboxStore};

/// Wraps a store; after [`kill`](Killable::kill) every call fails (a temporary error) and
/// [`relay_stopped`](OutboxStore::relay_stopped) hands nothing over: a relay that died, as far
/// as the database can tell. Its claims and anything else it holds expire on their own.
#[derive(Debug)]
pub struct Killable<S> {
    inner: S,
    dead: AtomicBool,
}

impl<S: OutboxStore> Killable<S> {
    /// `inner`, alive.
    pub fn new(inner: S) -> Self {
        Self { inner, dead: AtomicBool::new(false) }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// From now on, every call fails.
    pub fn kill(&self) {
        self.dead.store(true, Ordering::Relaxed);
    }

    fn alive(&self) -> Result<()> {
        if self.dead.load(Ordering::Relaxed) {
            return Err(Error::temporary("testkit", "the store was killed", None));
        }
        Ok(())
    }
}

#[async_trait]
impl<S: OutboxStore> OutboxStore for Killable<S> {
    async fn enqueue(&self, messages: Vec<NewMessage>) -> Result<Vec<MessageId>> {
        self.alive()?;
        self.inner.enqueue(messages).await
    }
    async fn claim_ids(&self, ids: &[MessageId], lease: &Lease) -> Result<Vec<OutboxMessage>> {
        self.alive()?;
        self.inner.claim_ids(ids, lease).await
    }
    async fn retryable_among(&self, ids: &[MessageId]) -> Result<Vec<MessageId>> {
        self.alive()?;
        self.inner.retryable_among(ids).await
    }
    async fn claim_due(&self, limit: usize, min_age: Duration, lease: &Lease) -> Result<Vec<OutboxMessage>> {
        self.alive()?;
        self.inner.claim_due(limit, min_age, lease).await
    }
    async fn complete(&self, ids: &[MessageId], lease: &Lease) -> Result<u64> {
        self.alive()?;
        self.inner.complete(ids, lease).await
    }
    async fn release(&self, ids: &[MessageId], lease: &Lease) -> Result<()> {
        self.alive()?;
        self.inner.release(ids, lease).await
    }
    async fn fail(&self, failures: &[Failure], lease: &Lease) -> Result<()> {
        self.alive()?;
        self.inner.fail(failures, lease).await
    }
    async fn stats(&self) -> Result<OutboxStats> {
        self.alive()?;
        self.inner.stats().await
    }
    fn relay_started(&self) {
        self.inner.relay_started();
    }
    async fn relay_stopped(&self) {
        if self.alive().is_ok() {
            self.inner.relay_stopped().await;
        }
    }
}
