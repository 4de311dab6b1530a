//! A NATS server stopped mid-run: publishes fail as retryable, and once it is back every
//! message is in the stream exactly once. Runs its own `nats-server` on a free port.

mod common;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use outbox_core::testkit::eventually;
use outbox_core::{FallbackConfig, MemoryStore, NewMessage, OutboxStore, Relay, RetryPolicy};
use outbox_nats::{JetStreamBus, NATS_MSG_ID, StreamSpec, connect, ensure_stream};

const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// A `nats-server` child that is killed when dropped, even if the test panics.
struct Server {
    child: Child,
}

impl Server {
    fn start(port: u16, dir: &std::path::Path) -> Self {
        let child = Command::new(NATS_SERVER)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        Self { child }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn wait_up(port: u16) {
    eventually("nats-server to accept connections", Duration::from_secs(10), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_during_an_outage_arrive_once_the_server_is_back() {
    if !std::path::Path::new(NATS_SERVER).exists() {
        outbox_core::testkit::unreachable_server::<()>("NATS_SERVER", NATS_SERVER, "nats-server binary not found");
        return;
    }
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("outbox-nats-outage-{}", outbox_core::testkit::unique_suffix()));
    let mut server = Some(Server::start(port, &dir));
    wait_up(port).await;
    let url = format!("nats://127.0.0.1:{port}");
    let client = connect(&url).await.unwrap();
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

    drop(server.take()); // the outage
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

    server = Some(Server::start(port, &dir));
    wait_up(port).await;
    eventually("every message to be published after the restart", Duration::from_secs(60), || {
        let store = store.clone();
        async move { (store.stats().await.unwrap().pending == 0).then_some(()) }
    })
    .await;
    relay.shutdown().await.unwrap();

    let js = bus.context();
    let stream = js.get_stream("OUTAGE").await.unwrap();
    let mut seen = HashSet::new();
    let last = stream.cached_info().state.last_sequence;
    for seq in 1..=last {
        if let Ok(m) = stream.get_raw_message(seq).await {
            let id = m.headers.get(NATS_MSG_ID).expect("Nats-Msg-Id").as_str().parse().unwrap();
            assert!(seen.insert(id), "message {id} stored twice");
        }
    }
    assert_eq!(seen, ids, "nothing lost");
    assert_eq!(store.stats().await.unwrap().dead, 0);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
