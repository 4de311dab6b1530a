//! Edges of the engines: odd notifiers, throttling brokers, many relays hearing every id.
//! Every wait has a deadline.

mod common;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::{CountingStore, asked};
use futures::StreamExt;
use outbox_core::testkit::eventually;
use outbox_core::{
    Bus, Error, FallbackConfig, ListenerConfig, MemoryBus, MemoryStore, MessageId, NewMessage, Notice, NoticeStream,
    Notifier, OutboxMessage, OutboxStore, PublishOutcome, Relay, RetryPolicy,
};
use tokio::sync::broadcast;

const WAIT: Duration = Duration::from_secs(20);

/// Every subscriber hears every notice, as with NATS or Redis pub/sub.
#[derive(Debug)]
struct FanOutNotifier {
    tx: broadcast::Sender<Vec<MessageId>>,
}

impl FanOutNotifier {
    fn new() -> Self {
        Self { tx: broadcast::channel(100_000).0 }
    }
}

#[async_trait]
impl Notifier for FanOutNotifier {
    async fn notify(&self, ids: &[MessageId]) {
        let _ = self.tx.send(ids.to_vec());
    }
    async fn subscribe(&self) -> outbox_core::Result<NoticeStream> {
        let rx = self.tx.subscribe();
        Ok(futures::stream::unfold(rx, |mut rx| async move {
            let ids = rx.recv().await.ok()?;
            Some((Ok(Notice::Committed(ids)), rx))
        })
        .boxed())
    }
}

/// Fails every message of the key `dead` for good, so its successors wait for ever.
#[derive(Debug, Default)]
struct DeadHeadBus {
    inner: MemoryBus,
}

#[async_trait]
impl Bus for DeadHeadBus {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<PublishOutcome> {
        let (dead, live): (Vec<_>, Vec<_>) = batch.iter().cloned().partition(|m| m.key.as_deref() == Some("dead"));
        self.inner.publish(&live).await;
        batch
            .iter()
            .map(|m| match dead.iter().any(|d| d.id == m.id) {
                true => PublishOutcome::Permanent("rejected".into()),
                false => PublishOutcome::Published,
            })
            .collect()
    }
}

/// Two relays hear every id (fan-out) while a key sits behind a dead head: each relay's
/// deferred ids stay bounded, so the ids asked of `claim_ids` stay a small multiple of the ids
/// enqueued instead of cycling for as long as anything makes progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_ids_stay_bounded_with_two_relays_and_a_fan_out_notifier() {
    const MESSAGES: usize = 4_000;
    const PARKED: usize = 50;
    let store = Arc::new(CountingStore::default());
    let bus = Arc::new(DeadHeadBus::default());
    let notifier = Arc::new(FanOutNotifier::new());
    let relays: Vec<_> = (0..2)
        .map(|_| {
            Relay::builder(store.clone(), bus.clone())
                .notifier(notifier.clone())
                .listener(ListenerConfig::default().max_batch(64))
                // The fallback only mops up at the end; the listener carries the load.
                .fallback(FallbackConfig::default().interval(Duration::from_millis(500)))
                .build()
                .unwrap()
                .spawn()
        })
        .collect();
    eventually("both relays listen", WAIT, || async { (notifier.tx.receiver_count() >= 2).then_some(()) }).await;
    let dead: Vec<NewMessage> = (0..=PARKED).map(|i| NewMessage::new("t", format!("{i}")).key("dead")).collect();
    let parked = store.enqueue(dead).await.unwrap();
    notifier.notify(&parked).await;
    let parked_asks = || {
        let asked = asked(&store);
        parked[1..].iter().map(|id| asked.get(id).copied().unwrap_or(0)).sum::<usize>()
    };
    let mut after_phase = Vec::new();
    for phase in 1..=2 {
        for chunk in (0..MESSAGES / 2).collect::<Vec<_>>().chunks(20) {
            let batch =
                chunk.iter().map(|i| NewMessage::new("t", format!("{i}")).key(format!("k{}", i % 20))).collect();
            let ids = store.enqueue(batch).await.unwrap();
            notifier.notify(&ids).await;
        }
        bus.inner.wait_for(phase * MESSAGES / 2, WAIT).await.expect("every live message is published");
        after_phase.push(parked_asks());
    }
    for r in relays {
        r.shutdown().await.unwrap();
    }
    let enqueued = MESSAGES + PARKED + 1;
    let total: usize = asked(&store).values().sum();
    eprintln!("claim_ids asked for {total} ids ({enqueued} enqueued); parked ids after each phase: {after_phase:?}");
    // Ids parked behind a dead head stop being asked for while other keys keep flowing: the
    // deferred list does not grow with the length of the run.
    assert_eq!(after_phase[0], after_phase[1], "parked ids were still retried in the second phase");
    // Each relay hears every id; a claim that takes part of a batch asks again for the rest, and a
    // deferred id is retried at most MAX_TRIES (4) times. Measured 7-11x here; the unbounded
    // list asked 21-41x, more the longer it ran.
    assert!(total <= 16 * enqueued, "claim_ids was asked for {total} ids, {enqueued} were enqueued");
    assert_eq!(store.stats().await.unwrap().pending, PARKED as u64, "the parked ones still wait");
}

/// Yields each batch of notified ids once per subscription, then ends: a notifier whose
/// connection drops after every message.
#[derive(Debug, Default)]
struct OneShotNotifier {
    queued: Mutex<VecDeque<Vec<MessageId>>>,
    wake: tokio::sync::Notify,
    subscriptions: AtomicUsize,
}

#[async_trait]
impl Notifier for OneShotNotifier {
    async fn notify(&self, ids: &[MessageId]) {
        self.queued.lock().unwrap().push_back(ids.to_vec());
        self.wake.notify_waiters();
    }
    async fn subscribe(&self) -> outbox_core::Result<NoticeStream> {
        self.subscriptions.fetch_add(1, Ordering::SeqCst);
        let next = self.queued.lock().unwrap().pop_front();
        // An unfold that ends after one item panics if polled again: the listener must fuse it.
        Ok(futures::stream::unfold(next, |next| async move { Some((Ok(Notice::Committed(next?)), None)) }).boxed())
    }
}

/// A notice stream that ends after one notice does not kill the listener: it resubscribes,
/// catches up, and later notices still publish (no fallback to hide a dead listener).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_stream_that_ends_after_one_notice_does_not_stop_the_listener() {
    let store = Arc::new(MemoryStore::new());
    let bus = Arc::new(MemoryBus::new());
    let notifier = Arc::new(OneShotNotifier::default());
    let relay = common::spawn_listener_only(store.clone(), bus.clone(), notifier.clone());
    for n in 1..=3 {
        let ids = store.enqueue(vec![NewMessage::new("t", format!("{n}"))]).await.unwrap();
        notifier.notify(&ids).await;
        bus.wait_for(n, WAIT).await.expect("published by the listener");
        let subscribed = notifier.subscriptions.load(Ordering::SeqCst);
        // Next subscription picks it up, whichever stream is open.
        eventually("the listener subscribes again", WAIT, || async {
            (notifier.subscriptions.load(Ordering::SeqCst) > subscribed).then_some(())
        })
        .await;
    }
    relay.health().expect("the listener still runs");
    relay.shutdown().await.expect("a clean shutdown");
}

/// A notifier whose streams end at once.
#[derive(Debug, Default)]
struct DeadStreamNotifier {
    subscriptions: AtomicUsize,
}

#[async_trait]
impl Notifier for DeadStreamNotifier {
    async fn notify(&self, _: &[MessageId]) {}
    async fn subscribe(&self) -> outbox_core::Result<NoticeStream> {
        self.subscriptions.fetch_add(1, Ordering::SeqCst);
        Ok(futures::stream::empty().boxed())
    }
}

/// Resubscribing backs off: a stream that ends at once is not reopened in a tight loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubscribing_backs_off_when_every_stream_ends_at_once() {
    let notifier = Arc::new(DeadStreamNotifier::default());
    let relay = common::spawn_listener_only(Arc::new(MemoryStore::new()), Arc::new(MemoryBus::new()), notifier.clone());
    eventually("a second subscription", WAIT, || async {
        (notifier.subscriptions.load(Ordering::SeqCst) >= 2).then_some(())
    })
    .await;
    // A negative can only be observed over a window. Delays 0.1, 0.2, 0.4, 0.8 s… allow at
    // most 5 subscriptions in the first 1.5 s, however slow the machine.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let n = notifier.subscriptions.load(Ordering::SeqCst);
    assert!(n <= 5, "{n} subscriptions in 1.5 s: no back-off");
    relay.shutdown().await.unwrap();
}

/// Panics when asked to subscribe.
#[derive(Debug)]
struct PanickingNotifier;

#[async_trait]
impl Notifier for PanickingNotifier {
    async fn notify(&self, _: &[MessageId]) {}
    async fn subscribe(&self) -> outbox_core::Result<NoticeStream> {
        panic!("notifier bug")
    }
}

/// An engine that dies shows in `health` and in `shutdown`'s result; the other keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_engine_shows_in_health_and_shutdown() {
    let store = Arc::new(MemoryStore::new());
    let bus = Arc::new(MemoryBus::new());
    let relay = Relay::builder(store.clone(), bus.clone())
        .notifier(Arc::new(PanickingNotifier))
        .fallback(FallbackConfig::default().interval(Duration::from_millis(20)).min_age(Duration::ZERO))
        .build()
        .unwrap()
        .spawn();
    let err = eventually("health reports the dead listener", WAIT, || async { relay.health().err() }).await;
    assert!(matches!(&err, Error::EngineStopped { engine: "listener", reason } if reason.contains("notifier bug")));
    store.enqueue(vec![NewMessage::new("t", "swept")]).await.unwrap();
    bus.wait_for(1, WAIT).await.expect("the fallback still publishes");
    match relay.shutdown().await {
        Err(Error::EngineStopped { engine: "listener", .. }) => {}
        other => panic!("shutdown must report the dead listener, got {other:?}"),
    }
}

/// Answers the first attempt of each message with "retry after `delay`", then publishes.
#[derive(Debug)]
struct ThrottlingBus {
    delay: Duration,
    attempts: Mutex<Vec<Instant>>,
    inner: MemoryBus,
}

#[async_trait]
impl Bus for ThrottlingBus {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<PublishOutcome> {
        self.attempts.lock().unwrap().push(Instant::now());
        if batch.iter().all(|m| m.attempts == 0) {
            let error = "429 Too Many Requests".to_owned();
            return vec![PublishOutcome::RetryAfter { delay: self.delay, error }; batch.len()];
        }
        self.inner.publish(batch).await
    }
}

/// `RetryAfter` is honoured: the retry waits at least the broker's delay, even when the
/// policy's own backoff is far shorter, and it counts as an attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_waits_at_least_the_brokers_delay() {
    let store = Arc::new(MemoryStore::new());
    let bus =
        Arc::new(ThrottlingBus { delay: Duration::from_secs(1), attempts: Mutex::default(), inner: MemoryBus::new() });
    let relay = Relay::builder(store.clone(), bus.clone())
        .retry(RetryPolicy::default().backoff(Duration::from_millis(10), Duration::from_millis(20)))
        .fallback(FallbackConfig::default().interval(Duration::from_millis(20)).min_age(Duration::ZERO))
        .without_listener()
        .build()
        .unwrap()
        .spawn();
    store.enqueue(vec![NewMessage::new("t", "throttled")]).await.unwrap();
    bus.inner.wait_for(1, WAIT).await.expect("published after the wait");
    relay.shutdown().await.unwrap();
    let attempts = bus.attempts.lock().unwrap().clone();
    assert_eq!(attempts.len(), 2, "one throttled attempt, one that went through");
    let waited = attempts[1] - attempts[0];
    assert!(waited >= Duration::from_millis(990), "retried after {waited:?}, before the broker's 1 s");
    assert_eq!(bus.inner.messages()[0].attempts, 1, "the throttled attempt was counted");
}
