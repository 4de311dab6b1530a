//! Redis stopped and restarted mid-run: nothing is lost. Runs its own `redis-server` on a free
//! port (without persistence, so entries written before the stop are read before it).

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use outbox_core::testkit::eventually;
use outbox_core::{
    Bus, FallbackConfig, MemoryStore, MessageId, NewMessage, OutboxStore, PublishOutcome, Relay, RetryPolicy,
};
use outbox_redis::{Dedup, RedisStreamsBus, connect};

use common::server::Server;

async fn ids_in(conn: &mut redis::aio::ConnectionManager, stream: &str) -> Vec<MessageId> {
    common::read(conn, stream).await.iter().map(|r| r.headers["Outbox-Message-Id"].parse().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_across_a_redis_restart_are_not_lost() {
    let Some(server) = Server::start().await else { return };
    let (port, url) = (server.port, server.url());
    let mut server = Some(server);
    let mut conn = connect(&url).await.unwrap();
    let bus = Arc::new(
        RedisStreamsBus::builder(conn.clone()).stream_prefix("outage:").dedup(Dedup::Lua).build().await.unwrap(),
    );
    let store = Arc::new(MemoryStore::new());
    let relay = Relay::builder(store.clone(), bus.clone())
        .fallback(FallbackConfig::default().interval(Duration::from_millis(50)).min_age(Duration::ZERO))
        .retry(RetryPolicy::default().max_attempts(1000).backoff(Duration::from_millis(50), Duration::from_millis(500)))
        .build()
        .unwrap()
        .spawn();
    let all_done = || {
        let store = store.clone();
        async move { (store.stats().await.unwrap().pending == 0).then_some(()) }
    };

    let mut committed = HashSet::new();
    for i in 0..50 {
        committed.extend(
            store.enqueue(vec![NewMessage::new("orders", format!("{i}")).key(format!("k{}", i % 5))]).await.unwrap(),
        );
    }
    eventually("the first 50 published", Duration::from_secs(20), all_done).await;
    let mut delivered: Vec<MessageId> = ids_in(&mut conn, "outage:orders").await;

    drop(server.take()); // the outage; this server keeps nothing on disk
    for i in 50..100 {
        committed.extend(
            store.enqueue(vec![NewMessage::new("orders", format!("{i}")).key(format!("k{}", i % 5))]).await.unwrap(),
        );
    }
    eventually("publishes to fail while Redis is down", Duration::from_secs(20), || {
        let relay = &relay;
        async move { (relay.stats().retried() > 0).then_some(()) }
    })
    .await;
    assert!(store.stats().await.unwrap().pending > 0);
    let probe = common::stored(NewMessage::new("probe", "while down"));
    let outcome = bus.publish(&[probe]).await.remove(0);
    assert!(matches!(outcome, PublishOutcome::Retryable(_)), "{outcome:?}");

    server = Server::start_on(port).await;
    eventually("everything published after the restart", Duration::from_secs(60), all_done).await;
    relay.shutdown().await.unwrap();
    delivered.extend(ids_in(&mut conn, "outage:orders").await);

    let unique: HashSet<_> = delivered.iter().copied().collect();
    assert_eq!(unique.len(), delivered.len(), "no message appended twice");
    assert_eq!(unique, committed, "nothing lost");
    assert_eq!(store.stats().await.unwrap().dead, 0);
    drop(server);
}
