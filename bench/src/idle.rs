//! How many queries an idle relay sends: a counting store around the real one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use outbox::{
    ChannelNotifier, DeadLetter, DeadLetterQuery, Failure, FallbackConfig, Lease, MessageId, NewMessage, OutboxMessage,
    OutboxStats, OutboxStore, Relay, ReplaySelector, Result,
};

use crate::env::Env;
use crate::report::Report;

#[derive(Debug)]
struct Counting {
    inner: outbox::sea_orm::SqlStore,
    calls: AtomicU64,
}

impl Counting {
    fn hit(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl OutboxStore for Counting {
    async fn enqueue(&self, m: Vec<NewMessage>) -> Result<Vec<MessageId>> {
        self.hit();
        self.inner.enqueue(m).await
    }
    async fn claim_ids(&self, ids: &[MessageId], l: &Lease) -> Result<Vec<OutboxMessage>> {
        self.hit();
        self.inner.claim_ids(ids, l).await
    }
    async fn claim_due(&self, n: usize, age: Duration, l: &Lease) -> Result<Vec<OutboxMessage>> {
        self.hit();
        self.inner.claim_due(n, age, l).await
    }
    async fn complete(&self, ids: &[MessageId], l: &Lease) -> Result<u64> {
        self.hit();
        self.inner.complete(ids, l).await
    }
    async fn fail(&self, f: &[Failure], l: &Lease) -> Result<()> {
        self.hit();
        self.inner.fail(f, l).await
    }
    async fn stats(&self) -> Result<OutboxStats> {
        self.hit();
        self.inner.stats().await
    }
    async fn key_backlog(&self, n: usize) -> Result<Vec<(String, u64)>> {
        self.hit();
        self.inner.key_backlog(n).await
    }
    async fn dead_letters(&self, q: &DeadLetterQuery) -> Result<Vec<DeadLetter>> {
        self.hit();
        self.inner.dead_letters(q).await
    }
    async fn replay(&self, s: &ReplaySelector) -> Result<u64> {
        self.hit();
        self.inner.replay(s).await
    }
    async fn purge_dead(&self, d: Duration) -> Result<u64> {
        self.hit();
        self.inner.purge_dead(d).await
    }
    async fn purge_published(&self, d: Duration, n: usize) -> Result<u64> {
        self.hit();
        self.inner.purge_published(d, n).await
    }
}

pub(crate) async fn run(env: &Env, report: &mut Report, quick: bool) {
    let table = env.table(false).await;
    let store = Arc::new(Counting { inner: table.store.clone(), calls: AtomicU64::new(0) });
    let (bus, stream, _) = env.jetstream().await;
    let interval = Duration::from_millis(500);
    let relay = Relay::builder(store.clone(), bus)
        .notifier(Arc::new(ChannelNotifier::new(16)))
        .fallback(FallbackConfig::default().interval(interval).concurrency(1))
        .build()
        .expect("relay")
        .spawn();
    tokio::time::sleep(Duration::from_secs(1)).await; // start-up sweep and catch-up
    let before = store.calls.load(Ordering::Relaxed);
    let window = if quick { Duration::from_secs(3) } else { Duration::from_secs(10) };
    tokio::time::sleep(window).await; // the measurement is what happens while idle
    let queries = store.calls.load(Ordering::Relaxed) - before;
    relay.shutdown().await.expect("shutdown");
    let sweeps = window.as_secs_f64() / interval.as_secs_f64();
    report.row(
        "idle",
        &format!("store calls while idle, interval {interval:?}, over {window:?}"),
        queries as f64,
        "calls",
        None,
    );
    report.row("idle", "store calls per sweep (claim_due + stats)", queries as f64 / sweeps, "calls/sweep", None);
    table.drop().await;
    env.drop_stream(&stream).await;
}
