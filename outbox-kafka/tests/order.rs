//! Per-key order across retries, end to end: a relay drains keyed messages through a bus that
//! fails some first attempts, before sending (nothing written) and after (written, but the
//! ack "lost", so the record goes out twice). Each key's records must still come in enqueue
//! order, a duplicate only right after its original.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use common::TestTopic;
use outbox_core::testkit::eventually;
use outbox_core::{
    Bus, FallbackConfig, MemoryStore, NewMessage, OutboxMessage, OutboxStore, PublishOutcome, Relay, RetryPolicy,
};
use outbox_kafka::KafkaBus;

const KEYS: usize = 20;
const PER_KEY: usize = 25;

/// Fails the first attempt of every third message of a key before sending it, and reports
/// the first attempt of every fifth as failed after sending it.
#[derive(Debug)]
struct Flaky {
    inner: KafkaBus,
    lost_acks: AtomicU64,
}

fn seq(msg: &OutboxMessage) -> usize {
    String::from_utf8_lossy(&msg.payload).rsplit('-').next().unwrap().parse().unwrap()
}

#[async_trait]
impl Bus for Flaky {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<PublishOutcome> {
        let refused = |m: &OutboxMessage| m.attempts == 0 && seq(m) % 3 == 1;
        let sent: Vec<OutboxMessage> = batch.iter().filter(|m| !refused(m)).cloned().collect();
        let mut outcomes = self.inner.publish(&sent).await.into_iter();
        batch
            .iter()
            .map(|m| {
                if refused(m) {
                    return PublishOutcome::Retryable("refused before sending (test)".into());
                }
                let o = outcomes.next().unwrap();
                if o.is_delivered() && m.attempts == 0 && seq(m) % 5 == 2 {
                    self.lost_acks.fetch_add(1, Ordering::Relaxed);
                    return PublishOutcome::Retryable("ack lost (test)".into());
                }
                o
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_keeps_its_order_across_retries() {
    let Some(bus) = common::bus(|b| b).await else { return };
    let topic = TestTopic::create(&common::url(), "order", 3, &[]).await;
    let flaky = Arc::new(Flaky { inner: bus, lost_acks: AtomicU64::new(0) });
    let store = Arc::new(MemoryStore::new());
    for i in 0..PER_KEY {
        // One transaction per round, one message per key: the keys interleave in the outbox.
        let round = (0..KEYS).map(|k| NewMessage::new(&topic.name, format!("k{k}-{i}")).key(format!("k{k}")));
        store.enqueue(round.collect()).await.unwrap();
    }
    let relay = Relay::builder(store.clone(), flaky.clone())
        .fallback(FallbackConfig::default().interval(Duration::from_millis(20)).min_age(Duration::ZERO))
        .retry(RetryPolicy::default().max_attempts(100).backoff(Duration::from_millis(10), Duration::from_millis(100)))
        .build()
        .unwrap()
        .spawn();
    eventually("the outbox to drain", Duration::from_secs(60), || {
        let store = store.clone();
        async move { (store.stats().await.unwrap().pending == 0).then_some(()) }
    })
    .await;
    relay.shutdown().await.unwrap();
    assert_eq!(store.stats().await.unwrap().dead, 0);

    let lost_acks = flaky.lost_acks.load(Ordering::Relaxed) as usize;
    assert!(lost_acks > 0, "the test lost no ack");
    let records = topic.read(KEYS * PER_KEY + lost_acks, Duration::from_secs(30)).await;
    assert_eq!(records.len(), KEYS * PER_KEY + lost_acks, "every message once, plus one copy per lost ack");
    for (key, seqs) in common::assert_each_key_in_order(&records) {
        assert_eq!(seqs.iter().collect::<HashSet<_>>().len(), PER_KEY, "key {key}: {seqs:?}");
    }
}
