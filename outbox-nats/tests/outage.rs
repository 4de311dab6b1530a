//! A NATS server stopped mid-run: publishes fail as retryable, and once it is back every
//! message is in the stream exactly once; a notifier subscriber is woken by the reconnect.
//! Each test runs its own `nats-server` on a free port (never the shared one).

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use outbox_core::testkit::eventually;
use outbox_core::{
    Bus, FallbackConfig, MemoryStore, MessageId, NewMessage, Notice, Notifier, OutboxStore, PublishOutcome, Relay,
    RetryPolicy,
};
use outbox_nats::{JetStreamBus, NATS_MSG_ID, NatsNotifier, StreamSpec, connect, ensure_stream};

use common::OwnServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_during_an_outage_arrive_once_the_server_is_back() {
    let Some(server) = OwnServer::start().await else { return };
    let client = connect(&server.url()).await.unwrap();
    let bus = JetStreamBus::builder(client.clone())
        .subject_prefix("outage.")
        .ack_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    ensure_stream(bus.context(), &StreamSpec::new("OUTAGE", ["outage.>"])).await.unwrap();

    let store = Arc::new(MemoryStore::new());
    let relay = Relay::builder(store.clone(), Arc::new(bus.clone()))
        .fallback(FallbackConfig::default().interval(Duration::from_millis(50)).min_age(Duration::ZERO))
        .retry(RetryPolicy::default().max_attempts(1000).backoff(Duration::from_millis(50), Duration::from_millis(500)))
        .build()
        .unwrap()
        .spawn();

    let mut ids = HashSet::new();
    for i in 0..50 {
        ids.extend(
            store.enqueue(vec![NewMessage::new("orders", format!("{i}")).key(format!("k{}", i % 5))]).await.unwrap(),
        );
    }
    eventually("the first 50 published", Duration::from_secs(20), || {
        let store = store.clone();
        async move { (store.stats().await.unwrap().pending == 0).then_some(()) }
    })
    .await;

    let (port, dir) = server.kill(); // the outage
    let probe = outbox_core::OutboxMessage::from_new(NewMessage::new("orders", "probe"), 0);
    match &bus.publish(std::slice::from_ref(&probe)).await[0] {
        PublishOutcome::Retryable(_) => {}
        other => panic!("a publish during the outage must be retryable, got {other:?}"),
    }
    for i in 50..100 {
        ids.extend(
            store.enqueue(vec![NewMessage::new("orders", format!("{i}")).key(format!("k{}", i % 5))]).await.unwrap(),
        );
    }
    eventually("publishes to fail while the server is down", Duration::from_secs(20), || {
        let relay = &relay;
        async move { (relay.stats().retried() > 0).then_some(()) }
    })
    .await;
    assert!(store.stats().await.unwrap().pending > 0, "nothing can be published while the server is down");

    let _server = OwnServer::start_on(port, dir).await;
    eventually("every message to be published after the restart", Duration::from_secs(60), || {
        let store = store.clone();
        async move { (store.stats().await.unwrap().pending == 0).then_some(()) }
    })
    .await;
    relay.shutdown().await.unwrap();

    let stream = bus.context().get_stream("OUTAGE").await.unwrap();
    let mut seen = HashSet::new();
    for seq in 1..=stream.cached_info().state.last_sequence {
        if let Ok(m) = stream.get_raw_message(seq).await {
            let id: MessageId = m.headers.get(NATS_MSG_ID).expect("Nats-Msg-Id").as_str().parse().unwrap();
            assert!(seen.insert(id), "message {id} stored twice");
        }
    }
    // The client buffers while disconnected, so the timed-out probe may still land after the
    // restart: one reason a redelivery must carry the same Nats-Msg-Id.
    seen.remove(&probe.id);
    assert_eq!(seen, ids, "nothing lost, nothing extra");
    assert_eq!(store.stats().await.unwrap().dead, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_wakes_the_notifier_subscriber() {
    let Some(server) = OwnServer::start().await else { return };
    let client = connect(&server.url()).await.unwrap();
    let notifier = NatsNotifier::new(client.clone(), "outbox.notify").unwrap();
    let mut notices = notifier.subscribe().await.unwrap();

    let (port, dir) = server.kill();
    eventually("the client to notice the outage", Duration::from_secs(10), || {
        let up = client.connection_state() == outbox_nats::async_nats::connection::State::Connected;
        async move { (!up).then_some(()) }
    })
    .await;
    let silenced = MessageId::new();
    notifier.notify(&[silenced]).await; // lost: nobody hears it while the server is down
    let _server = OwnServer::start_on(port, dir).await;

    let notice = tokio::time::timeout(Duration::from_secs(30), notices.next())
        .await
        .expect("a notice after the reconnect")
        .expect("the stream is still open")
        .unwrap();
    assert_eq!(notice, Notice::Wake, "a reconnect asks for a sweep");
    assert!(notifier.errors() >= 1, "the notice sent while down is counted");

    // The subscription survives the reconnect (retried: the resubscribe may lag the Wake).
    let id = MessageId::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        notifier.notify(&[id]).await;
        match tokio::time::timeout(Duration::from_millis(200), notices.next()).await {
            Ok(Some(Ok(Notice::Committed(ids)))) if ids == vec![id] => break,
            _ => assert!(tokio::time::Instant::now() < deadline, "no notice after the reconnect"),
        }
    }
}
