//! Test doubles shared by the engine tests.
#![allow(unreachable_pub, dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use outbox_core::{
    Bus, Failure, Lease, MemoryStore, MessageId, NewMessage, Notifier, OutboxMessage, OutboxStats, OutboxStore, Relay,
    RelayHandle, Result,
};

/// A [`MemoryStore`] that counts claims: calls, and how often each id was asked for.
#[derive(Debug, Default)]
pub struct CountingStore {
    pub inner: MemoryStore,
    pub claims: AtomicUsize,
    /// `claim_due` calls that have returned.
    pub due_claims_done: AtomicUsize,
    pub asked: Mutex<HashMap<MessageId, usize>>,
}

#[async_trait]
impl OutboxStore for CountingStore {
    async fn enqueue(&self, m: Vec<NewMessage>) -> Result<Vec<MessageId>> {
        self.inner.enqueue(m).await
    }
    async fn claim_ids(&self, ids: &[MessageId], l: &Lease) -> Result<Vec<OutboxMessage>> {
        self.claims.fetch_add(1, Ordering::SeqCst);
        {
            let mut asked = self.asked.lock().unwrap();
            for id in ids {
                *asked.entry(*id).or_default() += 1;
            }
        }
        self.inner.claim_ids(ids, l).await
    }
    async fn retryable_among(&self, ids: &[MessageId]) -> Result<Vec<MessageId>> {
        self.inner.retryable_among(ids).await
    }
    async fn claim_due(&self, n: usize, age: Duration, l: &Lease) -> Result<Vec<OutboxMessage>> {
        self.claims.fetch_add(1, Ordering::SeqCst);
        let claimed = self.inner.claim_due(n, age, l).await;
        self.due_claims_done.fetch_add(1, Ordering::SeqCst);
        claimed
    }
    async fn complete(&self, ids: &[MessageId], l: &Lease) -> Result<u64> {
        self.inner.complete(ids, l).await
    }
    async fn fail(&self, f: &[Failure], l: &Lease) -> Result<()> {
        self.inner.fail(f, l).await
    }
    async fn stats(&self) -> Result<OutboxStats> {
        self.inner.stats().await
    }
}

/// How often `store` was asked to claim each id so far.
pub fn asked(store: &CountingStore) -> HashMap<MessageId, usize> {
    store.asked.lock().unwrap().clone()
}

/// A relay with its listener only: no fallback sweeps what the listener misses.
pub fn spawn_listener_only(store: Arc<dyn OutboxStore>, bus: Arc<dyn Bus>, notifier: Arc<dyn Notifier>) -> RelayHandle {
    Relay::builder(store, bus).notifier(notifier).without_fallback().build().unwrap().spawn()
}
