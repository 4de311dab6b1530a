//! The JetStream consumer runner on a real server, with the SQLite inbox: duplicates have one
//! effect, a poison payload and a message that keeps failing are dead-lettered while others
//! flow, per-key order holds, and a consumer killed between the inbox commit and the ack has
//! its effect once after redelivery.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::DeliverPolicy;
use outbox_core::RetryPolicy;
use outbox_core::consumer::{ConsumerConfig, Delivery, HandlerError, Processed, handler_fn, json_handler};
use outbox_core::testkit::eventually;
use outbox_nats::consumer::{ConsumerHandle, HEADER_DELIVERIES, HEADER_ERROR, JetStreamConsumer};
use outbox_sea_orm::inbox::{Inbox, InboxConfig, migrate_inbox};
use sea_orm::{ConnectionTrait, Statement};

use common::TestStream;

const WAIT: Duration = Duration::from_secs(20);

#[derive(serde::Deserialize)]
struct Order {
    key: String,
    seq: u32,
}

struct Fixture {
    stream: TestStream,
    inbox: Inbox,
    path: std::path::PathBuf,
}

async fn fixture() -> Option<Fixture> {
    let client = common::client().await?;
    let stream = TestStream::new(&client).await;
    let path = std::env::temp_dir().join(format!("outbox-nats-consumer-{}.db", uuid::Uuid::now_v7()));
    let db = outbox_sea_orm::connect_sqlite(&path).await.unwrap();
    migrate_inbox(&db, &InboxConfig::default()).await.unwrap();
    db.execute_unprepared(
        "CREATE TABLE effects (message_id TEXT NOT NULL, msg_key TEXT NOT NULL, seq INTEGER NOT NULL)",
    )
    .await
    .unwrap();
    Some(Fixture { stream, inbox: Inbox::new(db, InboxConfig::default()).unwrap(), path })
}

impl Fixture {
    fn consumer(&self, durable: &str, config: ConsumerConfig) -> JetStreamConsumer {
        JetStreamConsumer::new(self.stream.js.clone(), &self.stream.name, durable, self.stream.topic("dlq"))
            .filter_subject(self.stream.topic("orders"))
            .config(
                config.backoff(RetryPolicy::default().backoff(Duration::from_millis(20), Duration::from_millis(50))),
            )
    }

    /// Publishes an order with an `Outbox-Message-Id` but no `Nats-Msg-Id`, so JetStream stores
    /// every copy; returns the id.
    async fn publish(&self, id: &str, key: &str, payload: String) {
        let mut headers = HeaderMap::new();
        headers.insert("Outbox-Message-Id", id);
        headers.insert("Outbox-Key", key);
        let ack =
            self.stream.js.publish_with_headers(self.stream.topic("orders"), headers, payload.into()).await.unwrap();
        ack.await.unwrap();
    }

    async fn publish_order(&self, key: &str, seq: u32) -> String {
        let id = uuid::Uuid::now_v7().to_string();
        self.publish(&id, key, format!(r#"{{"key":"{key}","seq":{seq}}}"#)).await;
        id
    }

    async fn effects(&self) -> i64 {
        let db = self.inbox.db();
        let sql = "SELECT COUNT(*) AS n FROM effects";
        let row = db.query_one_raw(Statement::from_string(db.get_database_backend(), sql)).await.unwrap().unwrap();
        row.try_get::<i64>("", "n").unwrap()
    }

    async fn finish(self) {
        self.stream.delete().await;
        drop(self.inbox);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The handler of the tests: records the order's effect through the inbox.
async fn record(inbox: Inbox, order: Order, d: Delivery) -> Result<Processed<()>, HandlerError> {
    let sql =
        format!("INSERT INTO effects (message_id, msg_key, seq) VALUES ('{}', '{}', {})", d.id, order.key, order.seq);
    let done = inbox.process(&d.id, move |txn| Box::pin(async move { txn.execute_unprepared(&sql).await.map(|_| ()) }));
    Ok(done.await?)
}

async fn wait_for(handle: &ConsumerHandle, what: &str, done: impl Fn(outbox_nats::consumer::ConsumerStats) -> bool) {
    eventually(what, WAIT, || {
        let ok = done(handle.stats());
        async move { ok.then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_republished_message_has_one_effect() {
    let Some(fx) = fixture().await else { return };
    let mut ids = Vec::new();
    for seq in 0..10 {
        ids.push(fx.publish_order("k", seq).await);
    }
    fx.publish(&ids[3], "k", r#"{"key":"k","seq":3}"#.to_owned()).await;

    let inbox = fx.inbox.clone();
    let handler = json_handler(move |order: Order, d| record(inbox.clone(), order, d));
    let handle = fx.consumer("dups", ConsumerConfig::default().concurrency(4)).spawn(handler).await.unwrap();
    wait_for(&handle, "11 deliveries acknowledged", |s| s.processed + s.duplicates == 11).await;
    let stats = handle.stats();
    assert_eq!((stats.processed, stats.duplicates), (10, 1), "{stats:?}");
    assert_eq!(fx.effects().await, 10);
    handle.shutdown().await.unwrap();
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_and_failing_messages_are_dead_lettered_while_others_flow() {
    let Some(fx) = fixture().await else { return };
    fx.publish_order("a", 1).await;
    let poison = uuid::Uuid::now_v7().to_string();
    fx.publish(&poison, "b", "not json".to_owned()).await;
    let failing = fx.publish_order("fail", 2).await;
    fx.publish_order("a", 3).await;

    let inbox = fx.inbox.clone();
    let handler = json_handler(move |order: Order, d: Delivery| {
        let inbox = inbox.clone();
        async move {
            if order.key == "fail" {
                return Err(HandlerError::retry(format!("downstream unavailable (attempt {})", d.attempt)));
            }
            record(inbox, order, d).await
        }
    });
    let config = ConsumerConfig::default().max_deliveries(3);
    let handle = fx.consumer("poison", config).spawn(handler).await.unwrap();
    wait_for(&handle, "2 processed, 2 dead-lettered", |s| s.processed == 2 && s.dead_lettered == 2).await;
    assert_eq!(handle.stats().retried, 2, "the failing message was retried before its last delivery");
    assert_eq!(fx.effects().await, 2);

    let dlq = fx.stream.js.get_stream(&fx.stream.name).await.unwrap();
    let letters = dlq
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            filter_subject: fx.stream.topic("dlq"),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut batch = letters.fetch().max_messages(2).expires(Duration::from_secs(5)).messages().await.unwrap();
    let mut seen = Vec::new();
    while let Some(m) = futures::StreamExt::next(&mut batch).await {
        let m = m.unwrap();
        let h = m.headers.clone().unwrap();
        let get = |n: &str| h.get(n).map(|v| v.as_str().to_owned()).unwrap_or_default();
        seen.push((get("Outbox-Message-Id"), get(HEADER_ERROR), get(HEADER_DELIVERIES), m.payload.to_vec()));
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    let of = |id: &str| seen.iter().find(|s| s.0 == id).unwrap_or_else(|| panic!("no dead letter for {id}: {seen:?}"));
    let p = of(&poison);
    assert!(p.1.contains("does not decode as") && p.1.contains("Order"), "{p:?}");
    assert_eq!((p.2.as_str(), p.3.as_slice()), ("1", b"not json".as_slice()));
    let f = of(&failing);
    assert!(f.1.contains("downstream unavailable (attempt 3)"), "{f:?}");
    assert_eq!(f.2, "3");
    handle.shutdown().await.unwrap();
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_holds_with_keys_in_parallel() {
    let Some(fx) = fixture().await else { return };
    for seq in 0..30 {
        fx.publish_order(["x", "y", "z"][seq as usize % 3], seq).await;
    }
    let seen: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let log = seen.clone();
    let handler = json_handler(move |order: Order, _d| {
        let log = log.clone();
        async move {
            // Later messages finish sooner, so only sequencing keeps a key's order.
            tokio::time::sleep(Duration::from_millis(u64::from(30 - order.seq))).await;
            log.lock().unwrap().push((order.key, order.seq));
            Ok(Processed::Done(()))
        }
    });
    let config = ConsumerConfig::default().per_key(true).concurrency(8).batch(30);
    let handle = fx.consumer("keys", config).spawn(handler).await.unwrap();
    wait_for(&handle, "30 processed", |s| s.processed == 30).await;
    let seen = seen.lock().unwrap().clone();
    for key in ["x", "y", "z"] {
        let order: Vec<u32> = seen.iter().filter(|(k, _)| k == key).map(|(_, s)| *s).collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "key {key} out of order: {order:?}");
        assert_eq!(order.len(), 10);
    }
    handle.shutdown().await.unwrap();
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_after_the_commit_has_the_effect_once() {
    let Some(fx) = fixture().await else { return };
    let id = fx.publish_order("k", 1).await;
    let config = ConsumerConfig::default().ack_wait(Duration::from_secs(1));

    // The first consumer commits the inbox transaction, then hangs before its ack and is
    // killed.
    let committed = Arc::new(tokio::sync::Notify::new());
    let (inbox, signal) = (fx.inbox.clone(), committed.clone());
    let hanging = json_handler(move |order: Order, d| {
        let (inbox, signal) = (inbox.clone(), signal.clone());
        async move {
            assert_eq!(record(inbox, order, d).await?, Processed::Done(()));
            signal.notify_one();
            std::future::pending::<()>().await;
            Ok(Processed::Done(()))
        }
    });
    let first = fx.consumer("killed", config.clone()).spawn(hanging).await.unwrap();
    tokio::time::timeout(WAIT, committed.notified()).await.expect("the first consumer committed");
    first.abort();
    assert_eq!(fx.effects().await, 1);

    let inbox = fx.inbox.clone();
    let handler = json_handler(move |order: Order, d| record(inbox.clone(), order, d));
    let second = fx.consumer("killed", config).spawn(handler).await.unwrap();
    wait_for(&second, "the redelivery is a duplicate", |s| s.duplicates == 1).await;
    assert_eq!(second.stats().processed, 0);
    assert_eq!(fx.effects().await, 1);
    assert!(fx.inbox.contains(&id).await.unwrap());
    second.shutdown().await.unwrap();
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_handlers_in_flight() {
    let Some(fx) = fixture().await else { return };
    fx.publish_order("k", 1).await;
    let started = Arc::new(tokio::sync::Notify::new());
    let signal = started.clone();
    let handler = handler_fn(move |_d| {
        let signal = signal.clone();
        async move {
            signal.notify_one();
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok(Processed::Done(()))
        }
    });
    let handle = fx.consumer("graceful", ConsumerConfig::default()).spawn(handler).await.unwrap();
    tokio::time::timeout(WAIT, started.notified()).await.expect("the handler started");
    assert_eq!(handle.stats().processed, 0);
    handle.shutdown().await.unwrap();
    let mut consumer = fx
        .stream
        .js
        .get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>("graceful", &fx.stream.name)
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(info.num_ack_pending, 0, "the in-flight message was acknowledged before shutdown returned");
    assert_eq!(info.num_pending, 0);
    fx.finish().await;
}
