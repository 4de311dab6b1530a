//! Engine behaviour with the in-memory store and bus. Every wait has a deadline.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::CountingStore;
use outbox_core::testkit::eventually;
use outbox_core::{
    Bus, ChannelNotifier, Error, FallbackConfig, ListenerConfig, MemoryBus, MemoryStore, MessageId, NewMessage,
    Notifier, OutboxAdmin, OutboxMessage, OutboxStore, PublishOutcome, Relay, RelayBuilder, RetryPolicy,
};
use tokio::sync::Notify;

const WAIT: Duration = Duration::from_secs(20);

fn fast_fallback() -> FallbackConfig {
    FallbackConfig::default().interval(Duration::from_millis(20)).min_age(Duration::ZERO)
}

fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy::default().max_attempts(max_attempts).backoff(Duration::from_millis(10), Duration::from_millis(50))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_alone_publishes_notified_messages() {
    let store = Arc::new(MemoryStore::new());
    let bus = Arc::new(MemoryBus::new());
    let notifier = Arc::new(ChannelNotifier::new(1024));
    let relay = common::spawn_listener_only(store.clone(), bus.clone(), notifier.clone());
    // Few keys, many messages: successors often find their predecessor in flight in another
    // batch; without a fallback they must still go out (deferred and retried by the listener).
    for i in 0..300 {
        let ids = store.enqueue(vec![NewMessage::new("t", format!("{i}")).key(format!("k{}", i % 3))]).await.unwrap();
        notifier.notify(&ids).await;
    }
    bus.wait_for(300, WAIT).await.unwrap();
    assert_eq!(notifier.dropped(), 0, "no notice was lost, so the listener alone delivered everything");
    relay.shutdown().await.unwrap();
    assert_eq!(store.stats().await.unwrap().pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_notice_channel_drops_notices_but_the_fallback_delivers_everything() {
    let store = Arc::new(MemoryStore::new());
    let bus = Arc::new(MemoryBus::new());
    let notifier = Arc::new(ChannelNotifier::new(1));
    let mut ids = Vec::new();
    // No relay yet: the channel fills after one notice and the rest are dropped.
    for i in 0..50 {
        let batch = store.enqueue(vec![NewMessage::new("t", format!("{i}"))]).await.unwrap();
        notifier.notify(&batch).await;
        ids.extend(batch);
    }
    assert_eq!(notifier.dropped(), 49, "notices beyond the capacity are dropped, never blocking the writer");

    let relay = Relay::builder(store.clone(), bus.clone())
        .notifier(notifier.clone())
        .fallback(fast_fallback())
        .build()
        .unwrap()
        .spawn();
    bus.wait_for(50, WAIT).await.unwrap();
    relay.shutdown().await.unwrap();
    let mut published: Vec<MessageId> = bus.messages().iter().map(|m| m.id).collect();
    published.sort();
    ids.sort();
    assert_eq!(published, ids, "every message exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_that_fails_twice_then_succeeds_publishes_once_with_two_attempts() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let bus = Arc::new(MemoryBus::with_hook(move |_| {
        (c.fetch_add(1, Ordering::SeqCst) < 2).then(|| PublishOutcome::Retryable("broker timeout".into()))
    }));
    let store = Arc::new(MemoryStore::new());
    let relay = Relay::builder(store.clone(), bus.clone())
        .fallback(fast_fallback())
        .retry(fast_retry(5))
        .build()
        .unwrap()
        .spawn();
    store.enqueue(vec![NewMessage::new("t", "x")]).await.unwrap();
    bus.wait_for(1, WAIT).await.unwrap();
    // Shutdown drains the in-flight batch, so its completion is recorded after it returns.
    relay.shutdown().await.unwrap();
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead), (0, 0));
    let published = bus.messages();
    assert_eq!(published.len(), 1, "published once");
    assert_eq!(published[0].attempts, 2, "after two failed attempts");
    assert_eq!(published[0].last_error.as_deref(), Some("broker timeout"));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_always_failing_message_is_dead_lettered_without_delaying_other_keys() {
    let bus = Arc::new(MemoryBus::with_hook(|m| {
        (m.key.as_deref() == Some("poison")).then(|| PublishOutcome::Retryable("rejected".into()))
    }));
    let store = Arc::new(MemoryStore::new());
    // Slow retries: the other keys must be done long before the poison message dies.
    let retry = RetryPolicy::default().max_attempts(4).backoff(Duration::from_millis(400), Duration::from_secs(2));
    let relay =
        Relay::builder(store.clone(), bus.clone()).fallback(fast_fallback()).retry(retry).build().unwrap().spawn();
    let poison = NewMessage::new("t", "bad").key("poison");
    let behind_poison = NewMessage::new("t", "waits").key("poison");
    let (poison_id, behind_id) = (poison.id, behind_poison.id);
    let mut batch = vec![poison, behind_poison];
    batch.extend((0..100).map(|i| NewMessage::new("t", format!("{i}")).key(format!("k{}", i % 10))));
    store.enqueue(batch).await.unwrap();

    bus.wait_for(100, WAIT).await.unwrap();
    assert_eq!(store.stats().await.unwrap().dead, 0, "other keys finished while the poison message was still retrying");

    let dead = eventually("the poison message to be dead-lettered", WAIT, || {
        let store = store.clone();
        async move { store.dead_letters(&Default::default()).await.unwrap().into_iter().next() }
    })
    .await;
    relay.shutdown().await.unwrap();
    assert_eq!(dead.message.id, poison_id);
    assert_eq!(dead.message.attempts, 4, "dead after max_attempts");
    assert_eq!(dead.message.last_error.as_deref(), Some("rejected"));
    assert_eq!(bus.len(), 100);
    assert!(bus.messages().iter().all(|m| m.id != behind_id), "its key waits behind the dead head");
    assert_eq!(store.stats().await.unwrap().pending, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_is_dead_lettered_at_once() {
    let bus = Arc::new(MemoryBus::with_hook(|m| {
        (m.payload == b"too big").then(|| PublishOutcome::Permanent("payload exceeds 1 MiB".into()))
    }));
    let store = Arc::new(MemoryStore::new());
    let relay = Relay::builder(store.clone(), bus.clone())
        .fallback(fast_fallback())
        .retry(fast_retry(10))
        .build()
        .unwrap()
        .spawn();
    store.enqueue(vec![NewMessage::new("t", "too big"), NewMessage::new("t", "fine")]).await.unwrap();
    let dead = eventually("dead letter", WAIT, || {
        let store = store.clone();
        async move { store.dead_letters(&Default::default()).await.unwrap().into_iter().next() }
    })
    .await;
    bus.wait_for(1, WAIT).await.unwrap();
    relay.shutdown().await.unwrap();
    assert_eq!(dead.message.attempts, 1, "no retries for a permanent failure");
    assert_eq!(dead.message.last_error.as_deref(), Some("payload exceeds 1 MiB"));
}

/// Blocks in `publish` until released, so a test can act while a batch is in flight.
#[derive(Debug, Default)]
struct GateBus {
    entered: Notify,
    release: Notify,
    published: Mutex<Vec<MessageId>>,
}

#[async_trait]
impl Bus for GateBus {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<PublishOutcome> {
        self.entered.notify_one();
        self.release.notified().await;
        self.published.lock().unwrap().extend(batch.iter().map(|m| m.id));
        vec![PublishOutcome::Published; batch.len()]
    }
}

/// Holds the batch holding one payload in `publish` until released; publishes the rest at once.
#[derive(Debug)]
struct PayloadGateBus {
    gated: &'static str,
    entered: Notify,
    gate: tokio::sync::Semaphore,
    published: Mutex<Vec<OutboxMessage>>,
}

impl PayloadGateBus {
    fn new(gated: &'static str) -> Self {
        Self { gated, entered: Notify::new(), gate: tokio::sync::Semaphore::new(0), published: Mutex::new(Vec::new()) }
    }
    fn published_payloads(&self) -> Vec<String> {
        self.published.lock().unwrap().iter().map(|m| String::from_utf8_lossy(&m.payload).into_owned()).collect()
    }
}

#[async_trait]
impl Bus for PayloadGateBus {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<PublishOutcome> {
        if batch.iter().any(|m| m.payload == self.gated.as_bytes()) {
            self.entered.notify_one();
            self.gate.acquire().await.unwrap().forget();
        }
        self.published.lock().unwrap().extend(batch.iter().cloned());
        vec![PublishOutcome::Published; batch.len()]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_waits_for_its_slow_head_however_much_else_the_listener_publishes_meanwhile() {
    let store = Arc::new(CountingStore::default());
    let bus = Arc::new(PayloadGateBus::new("slow 0"));
    let notifier = Arc::new(ChannelNotifier::new(1024));
    let relay = common::spawn_listener_only(store.clone(), bus.clone(), notifier.clone());
    // The listener's start-up catch-up claims whatever is due until empty; it must be over, or
    // it would claim the successor itself once the head is done.
    eventually("the catch-up drain is over", WAIT, || async {
        (store.due_claims_done.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    let head = store.enqueue(vec![NewMessage::new("t", "slow 0").key("slow")]).await.unwrap();
    notifier.notify(&head).await;
    tokio::time::timeout(WAIT, bus.entered.notified()).await.expect("the head's batch reached the bus");
    let successor = store.enqueue(vec![NewMessage::new("t", "slow 1").key("slow")]).await.unwrap();
    notifier.notify(&successor).await;
    // Every message published meanwhile is progress that retries "slow 1"; each retry finds its
    // head still in flight. Those retries are no sign of a dead head, so they must not use up
    // the id's tries while the head's batch is still running.
    for i in 0..20 {
        let ids = store.enqueue(vec![NewMessage::new("t", format!("fast {i}")).key(format!("f{i}"))]).await.unwrap();
        notifier.notify(&ids).await;
        eventually("the fast message is published", WAIT, || async {
            (bus.published_payloads().len() > i).then_some(())
        })
        .await;
    }
    bus.gate.add_permits(1);
    eventually("the slow key's successor is published after its head", WAIT, || async {
        let published = bus.published_payloads();
        published.iter().any(|p| p == "slow 1").then_some(published)
    })
    .await;
    relay.shutdown().await.unwrap();
    let retries = common::asked(&store)[&successor[0]];
    assert!(retries > 5, "the successor was retried while its head was in flight ({retries} claims)");
    let published = bus.published_payloads();
    let position = |payload: &str| published.iter().position(|p| p == payload).expect("published");
    assert!(position("slow 0") < position("slow 1"), "per-key order: {published:?}");
    assert_eq!(published.len(), 22, "each message once: {published:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_the_in_flight_batch_finish_and_then_claims_nothing() {
    let store = Arc::new(CountingStore::default());
    let bus = Arc::new(GateBus::default());
    let notifier = Arc::new(ChannelNotifier::new(16));
    let interval = Duration::from_millis(20);
    let relay = Relay::builder(store.clone(), bus.clone())
        .notifier(notifier.clone())
        .fallback(FallbackConfig::default().interval(interval).min_age(Duration::ZERO))
        .build()
        .unwrap()
        .spawn();
    let ids = store.enqueue(vec![NewMessage::new("t", "in flight")]).await.unwrap();
    notifier.notify(&ids).await;
    tokio::time::timeout(WAIT, bus.entered.notified()).await.expect("a batch reached the bus");

    let shutdown = tokio::spawn(relay.shutdown());
    // Shutdown must wait for the batch, not abandon it.
    assert!(!shutdown.is_finished());
    bus.release.notify_one();
    tokio::time::timeout(WAIT, shutdown).await.expect("shutdown returns").unwrap().unwrap();
    assert_eq!(*bus.published.lock().unwrap(), ids, "the in-flight batch was published");
    assert_eq!(store.stats().await.unwrap().pending, 0, "and completed");

    let claims_at_shutdown = store.claims.load(Ordering::SeqCst);
    store.enqueue(vec![NewMessage::new("t", "after shutdown")]).await.unwrap();
    notifier.notify(&ids).await;
    // A negative can only be observed over a window: ten sweep intervals.
    tokio::time::sleep(interval * 10).await;
    assert_eq!(store.claims.load(Ordering::SeqCst), claims_at_shutdown, "nothing claimed after shutdown");
    assert_eq!(store.stats().await.unwrap().pending, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_publish_ten_thousand_messages_exactly_once_in_key_order() {
    const MESSAGES: usize = 10_000;
    const KEYS: usize = 100;
    let store = Arc::new(MemoryStore::new());
    let bus = Arc::new(MemoryBus::new());
    let notifiers = [Arc::new(ChannelNotifier::new(256)), Arc::new(ChannelNotifier::new(256))];
    let relays: Vec<_> = notifiers
        .iter()
        .map(|n| {
            Relay::builder(store.clone(), bus.clone())
                .notifier(n.clone())
                .listener(ListenerConfig::default().max_batch(100))
                .fallback(fast_fallback().batch_size(200))
                .build()
                .unwrap()
                .spawn()
        })
        .collect();
    let mut expected: HashMap<String, Vec<MessageId>> = HashMap::new();
    for (i, chunk) in (0..MESSAGES).collect::<Vec<_>>().chunks(50).enumerate() {
        let batch: Vec<_> =
            chunk.iter().map(|n| NewMessage::new("t", format!("{n}")).key(format!("key-{}", n % KEYS))).collect();
        for m in &batch {
            expected.entry(m.key.clone().unwrap()).or_default().push(m.id);
        }
        let ids = store.enqueue(batch).await.unwrap();
        notifiers[i % 2].notify(&ids).await;
    }
    bus.wait_for(MESSAGES, Duration::from_secs(60)).await.unwrap();
    for r in relays {
        r.shutdown().await.unwrap();
    }
    let published = bus.messages();
    assert_eq!(published.len(), MESSAGES, "each message exactly once");
    let mut seen: HashMap<String, Vec<MessageId>> = HashMap::new();
    for m in published {
        seen.entry(m.key.unwrap()).or_default().push(m.id);
    }
    assert_eq!(seen.len(), KEYS);
    assert_eq!(seen, expected, "per-key enqueue order");
}

fn config_error(configure: impl FnOnce(RelayBuilder) -> RelayBuilder) -> &'static str {
    let builder = Relay::builder(Arc::new(MemoryStore::new()), Arc::new(MemoryBus::new()));
    match configure(builder).build() {
        Err(Error::Config { field, .. }) => field,
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn each_invalid_config_names_its_field() {
    type Configure = Box<dyn FnOnce(RelayBuilder) -> RelayBuilder>;
    let secs = Duration::from_secs;
    let cases: Vec<(&str, Configure)> = vec![
        ("listener.max_batch", Box::new(|b| b.listener(ListenerConfig::default().max_batch(0)))),
        ("listener.concurrency", Box::new(|b| b.listener(ListenerConfig::default().concurrency(0)))),
        (
            "listener.linger",
            Box::new(move |b| b.claim_ttl(secs(30)).listener(ListenerConfig::default().linger(secs(60)))),
        ),
        ("fallback.batch_size", Box::new(|b| b.fallback(FallbackConfig::default().batch_size(0)))),
        ("fallback.interval", Box::new(|b| b.fallback(FallbackConfig::default().interval(Duration::ZERO)))),
        ("fallback.concurrency", Box::new(|b| b.fallback(FallbackConfig::default().concurrency(0)))),
        ("retry.max_attempts", Box::new(|b| b.retry(RetryPolicy::default().max_attempts(0)))),
        ("retry.initial_backoff", Box::new(move |b| b.retry(RetryPolicy::default().backoff(Duration::ZERO, secs(1))))),
        ("retry.max_backoff", Box::new(move |b| b.retry(RetryPolicy::default().backoff(secs(2), secs(1))))),
        ("relay.claim_ttl", Box::new(|b| b.claim_ttl(Duration::ZERO))),
        ("relay.engines", Box::new(|b| b.without_listener().without_fallback())),
    ];
    for (field, configure) in cases {
        assert_eq!(config_error(configure), field);
    }
    let msg = Error::config("fallback.batch_size", "must be at least 1").to_string();
    assert_eq!(msg, "invalid configuration: `fallback.batch_size` must be at least 1");
    assert!(matches!(ChannelNotifier::with_capacity(0), Err(Error::Config { field: "notifier.capacity", .. })));
}

#[test]
fn invalid_messages_are_rejected_with_a_reason() {
    let empty = NewMessage::new("", "x");
    assert!(empty.validate().unwrap_err().to_string().contains("topic is empty"));
    let long = NewMessage::new("t".repeat(256), "x");
    assert!(long.validate().unwrap_err().to_string().contains("limit is 255"));
    let key = NewMessage::new("t", "x").key("k".repeat(300));
    assert!(key.validate().unwrap_err().to_string().contains("key is 300 bytes"));
}

#[test]
fn backoff_grows_and_is_capped() {
    let p = RetryPolicy::default().jitter(false).backoff(Duration::from_millis(100), Duration::from_secs(1));
    assert_eq!(p.delay_for(1), Duration::from_millis(100));
    assert_eq!(p.delay_for(2), Duration::from_millis(200));
    assert_eq!(p.delay_for(3), Duration::from_millis(400));
    assert_eq!(p.delay_for(20), Duration::from_secs(1));
}
