//! Reliability: a relay drains a backlog while its broker is killed for 10 s mid-drain. Once
//! the broker is back (same port, same SQLite store), every message is in the topic: none
//! lost, each key in order; duplicates are counted and printed. The test runs its own tansu
//! broker on a free port (never the shared one).
//!
//! The delivery timeout (30 s) outlasts the outage, so librdkafka holds the batch and resends
//! it after the restart (requests that were in flight at the kill included: the idempotent
//! producer's sequence numbers make those resends harmless). A timeout shorter than the outage
//! would make librdkafka bump the producer epoch, which tansu 0.6.0 cannot take (see
//! docs/kafka.md); the retryable outcome of a timeout is covered in `outcomes.rs`.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::{OwnBroker, TestTopic};
use outbox_core::testkit::eventually;
use outbox_core::{FallbackConfig, MemoryStore, MessageId, NewMessage, OutboxStore, Relay, RetryPolicy};

const KEYS: usize = 50;
const PER_KEY: usize = 100;
const OUTAGE: Duration = Duration::from_secs(10);

async fn pending(store: &MemoryStore) -> u64 {
    store.stats().await.unwrap().pending
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_drained_across_a_broker_outage_loses_nothing() {
    let Some(broker) = OwnBroker::start().await else { return };
    let servers = broker.servers();
    let Some(bus) = common::bus_on(&servers, |b| {
        b.delivery_timeout(Duration::from_secs(30))
            .request_timeout(Duration::from_secs(2))
            .option("reconnect.backoff.max.ms", "500")
    })
    .await
    else {
        return;
    };
    let topic = TestTopic::create(&servers, "outage", 3, &[]).await;

    let store = Arc::new(MemoryStore::new());
    let mut ids: HashSet<MessageId> = HashSet::new();
    for i in 0..PER_KEY {
        let round = (0..KEYS).map(|k| NewMessage::new(&topic.name, format!("k{k}-{i}")).key(format!("k{k}")));
        ids.extend(store.enqueue(round.collect()).await.unwrap());
    }
    let total = ids.len();
    let relay = Relay::builder(store.clone(), Arc::new(bus.clone()))
        .fallback(FallbackConfig::default().interval(Duration::from_millis(20)).min_age(Duration::ZERO).batch_size(50))
        .claim_ttl(Duration::from_secs(90))
        .retry(RetryPolicy::default().max_attempts(1000).backoff(Duration::from_millis(50), Duration::from_secs(1)))
        .build()
        .unwrap()
        .spawn();

    eventually("a tenth of the backlog to be published", Duration::from_secs(60), || {
        let relay = &relay;
        async move { (relay.stats().published() >= (total / 10) as u64).then_some(()) }
    })
    .await;
    let stopped = broker.kill();
    let left = pending(&store).await;
    assert!(left > 0, "the drain finished before the outage; make the backlog larger");
    let stuck = relay.stats().published();
    tokio::time::sleep(OUTAGE).await; // the outage itself, not a wait for a condition
    assert!(pending(&store).await > 0, "nothing can be published while the broker is down");
    let during = relay.stats().published() - stuck;
    let _broker = stopped.restart().await;

    eventually("the whole backlog to be published after the restart", Duration::from_secs(180), || {
        let store = store.clone();
        async move { (pending(&store).await == 0).then_some(()) }
    })
    .await;
    let stats = relay.stats();
    let (published, retried) = (stats.published(), stats.retried());
    relay.shutdown().await.unwrap();
    assert_eq!(store.stats().await.unwrap().dead, 0, "nothing dead-lettered");

    let records = topic.read(total, Duration::from_secs(60)).await;
    let seen: HashSet<MessageId> = records.iter().map(|r| r.id()).collect();
    let lost: Vec<_> = ids.difference(&seen).collect();
    assert!(lost.is_empty(), "{} of {total} messages lost", lost.len());
    assert_eq!(seen.len(), total, "no message that was never enqueued");
    let duplicates = records.len() - total;
    common::assert_each_key_in_order(&records);
    println!(
        "outage: {total} messages, {left} pending at the kill (+{during} acked after it), {OUTAGE:?} down; \
         0 lost, {duplicates} duplicates; relay published {published}, retried {retried}; producer restarts {}",
        bus.restarts()
    );
}
