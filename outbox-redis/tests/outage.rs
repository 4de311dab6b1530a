//! Redis stopped and restarted mid-run: nothing is lost. Runs its own `redis-server` on a free
//! port (without persistence, so entries written before the stop are read before it).

mod common;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use outbox_core::testkit::eventually;
use outbox_core::{FallbackConfig, MemoryStore, MessageId, NewMessage, OutboxStore, Relay, RetryPolicy};
use outbox_redis::{Dedup, RedisStreamsBus, connect};

/// A `redis-server` child that is killed when dropped, even if the test panics.
struct Server(Child);

impl Server {
    fn start(port: u16) -> Option<Self> {
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()
            .map(Self)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn wait_up(port: u16) {
    eventually("redis-server to accept connections", Duration::from_secs(10), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
    })
    .await;
}

async fn ids_in(conn: &mut redis::aio::ConnectionManager, stream: &str) -> Vec<MessageId> {
    common::read(conn, stream).await.iter().map(|r| r.headers["Outbox-Message-Id"].parse().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_across_a_redis_restart_are_not_lost() {
    let port = free_port();
    let Some(server) = Server::start(port) else {
        outbox_core::testkit::unreachable_server::<()>("PATH", "redis-server", "cannot start redis-server");
        return;
    };
    let mut server = Some(server);
    wait_up(port).await;
    let url = format!("redis://127.0.0.1:{port}");
    let mut conn = connect(&url).await.unwrap();
    let bus = RedisStreamsBus::builder(conn.clone()).stream_prefix("outage:").dedup(Dedup::Lua).build().await.unwrap();
    let store = Arc::new(MemoryStore::new());
    let relay = Relay::builder(store.clone(), Arc::new(bus))
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

    server = Server::start(port);
    wait_up(port).await;
    eventually("everything published after the restart", Duration::from_secs(60), all_done).await;
    relay.shutdown().await.unwrap();
    delivered.extend(ids_in(&mut conn, "outage:orders").await);

    let unique: HashSet<_> = delivered.iter().copied().collect();
    assert_eq!(unique.len(), delivered.len(), "no message appended twice");
    assert_eq!(unique, committed, "nothing lost");
    assert_eq!(store.stats().await.unwrap().dead, 0);
    drop(server);
}
