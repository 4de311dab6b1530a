//! Drives the service over HTTP against Postgres + NATS and Postgres + Redis, and checks that a
//! consumer of the stream receives each event exactly once; and that a second registration of
//! an email is 409 Conflict and enqueues nothing (Postgres and SQLite).

use std::collections::HashSet;
use std::time::Duration;

use auth_service::{BusSettings, Settings, UserRegistered, start};
use outbox::testkit::{eventually, test_url, unique_suffix, unreachable_server};

async fn serve(settings: &Settings) -> (String, outbox::RelayHandle) {
    let (routes, relay) = start(settings).await.expect("start");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, routes).await.unwrap() });
    (base, relay)
}

async fn register_users(base: &str, n: usize) -> Vec<UserRegistered> {
    let sfx = unique_suffix();
    let http = reqwest::Client::new();
    let mut users = Vec::new();
    for i in 0..n {
        let r = http
            .post(format!("{base}/users"))
            .json(&serde_json::json!({ "email": format!("u{i}.{sfx}@example.com") }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        users.push(r.json().await.unwrap());
    }
    let bad = http.post(format!("{base}/users")).json(&serde_json::json!({ "email": "nope" })).send().await.unwrap();
    assert_eq!(bad.status(), 422, "bad input is refused, and nothing is enqueued");
    users
}

async fn status(base: &str) -> serde_json::Value {
    reqwest::get(format!("{base}/outbox/status")).await.unwrap().json().await.unwrap()
}

/// Waits for `GET /outbox/status` to show nothing pending, claimed or dead.
async fn outbox_drained(base: &str) {
    eventually("GET /outbox/status to show an empty outbox", Duration::from_secs(10), || async move {
        let st = status(base).await;
        let empty = ["pending", "claimed", "dead"].iter().all(|k| st[k].as_u64() == Some(0));
        empty.then_some(())
    })
    .await;
}

/// The events in a Redis stream, in order; then deletes the stream.
async fn take_stream(conn: &mut outbox::redis::redis::aio::ConnectionManager, stream: &str) -> Vec<UserRegistered> {
    /// An XRANGE entry: its id and its field/value pairs.
    type Entry = (String, Vec<(String, Vec<u8>)>);
    let entries: Vec<Entry> =
        outbox::redis::redis::cmd("XRANGE").arg(stream).arg("-").arg("+").query_async(conn).await.unwrap();
    let _: i64 = outbox::redis::redis::cmd("DEL").arg(stream).query_async(conn).await.unwrap();
    entries
        .iter()
        .map(|(_, fields)| serde_json::from_slice(&fields.iter().find(|(k, _)| k == "payload").unwrap().1).unwrap())
        .collect()
}

fn settings(database_url: String, bus: BusSettings) -> Settings {
    Settings { database_url, bus, outbox_table: format!("auth_outbox_{}", unique_suffix()) }
}

/// A Postgres database of the test's own: a fresh schema that its connections use, so each
/// test gets its own `users` table. `None` when Postgres is unreachable and the run is not
/// strict.
struct PgSchema {
    url: String,
    name: String,
}

impl PgSchema {
    async fn create() -> Option<Self> {
        let url = test_url("OUTBOX_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test");
        let db = match sea_orm::Database::connect(&url).await {
            Ok(db) => db,
            Err(e) => return unreachable_server("OUTBOX_TEST_POSTGRES_URL", &url, e),
        };
        let name = format!("auth_{}", unique_suffix());
        sea_orm::ConnectionTrait::execute_unprepared(&db, &format!("CREATE SCHEMA {name}")).await.unwrap();
        let sep = if url.contains('?') { '&' } else { '?' };
        Some(Self { url: format!("{url}{sep}options=-c%20search_path%3D{name}"), name })
    }

    async fn drop(self) {
        let url = test_url("OUTBOX_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test");
        let db = sea_orm::Database::connect(&url).await.unwrap();
        let sql = format!("DROP SCHEMA {} CASCADE", self.name);
        sea_orm::ConnectionTrait::execute_unprepared(&db, &sql).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_and_nats_each_event_once() {
    let url = test_url("OUTBOX_TEST_NATS_URL", "nats://127.0.0.1:4222");
    let Ok(client) = outbox::nats::connect(&url).await else {
        return unreachable_server("OUTBOX_TEST_NATS_URL", &url, "unreachable").unwrap_or(());
    };
    let Some(pg) = PgSchema::create().await else { return };
    let sfx = unique_suffix();
    let (stream, prefix) = (format!("AUTH_{sfx}"), format!("auth{sfx}."));
    let settings = settings(pg.url.clone(), BusSettings::Nats { url, stream: stream.clone(), prefix });
    let (base, relay) = serve(&settings).await;
    let users = register_users(&base, 20).await;
    let js = outbox::nats::async_nats::jetstream::new(client);
    eventually("20 events in the stream", Duration::from_secs(20), || {
        let js = js.clone();
        let stream = stream.clone();
        async move {
            let mut s = js.get_stream(&stream).await.ok()?;
            (s.info().await.ok()?.state.messages == 20).then_some(())
        }
    })
    .await;
    // The broker acks before the relay marks the batch done: wait for the outbox to empty.
    outbox_drained(&base).await;
    relay.shutdown().await.unwrap();

    // A consumer reads the stream: each registered user's event, exactly once.
    use futures::StreamExt;
    let consumer = js
        .get_stream(&stream)
        .await
        .unwrap()
        .create_consumer(outbox::nats::async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let received: Vec<UserRegistered> = consumer
        .messages()
        .await
        .unwrap()
        .take(20)
        .map(|m| serde_json::from_slice(&m.unwrap().payload).unwrap())
        .collect()
        .await;
    let got: HashSet<_> = received.iter().map(|e| e.user_id.clone()).collect();
    assert_eq!(got.len(), 20);
    assert_eq!(got, users.iter().map(|u| u.user_id.clone()).collect());
    let _ = js.delete_stream(&stream).await;
    pg.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_and_redis_each_event_once() {
    let url = test_url("OUTBOX_TEST_REDIS_URL", "redis://127.0.0.1:6379");
    let Ok(mut conn) = outbox::redis::connect(&url).await else {
        return unreachable_server("OUTBOX_TEST_REDIS_URL", &url, "unreachable").unwrap_or(());
    };
    let Some(pg) = PgSchema::create().await else { return };
    let prefix = format!("auth:{}:", unique_suffix());
    let settings = settings(pg.url.clone(), BusSettings::Redis { url, prefix: prefix.clone() });
    let (base, relay) = serve(&settings).await;
    let users = register_users(&base, 20).await;
    let stream = format!("{prefix}users.registered");
    eventually("20 entries in the stream", Duration::from_secs(20), || {
        let mut conn = conn.clone();
        let stream = stream.clone();
        async move {
            let n: u64 = outbox::redis::redis::cmd("XLEN").arg(&stream).query_async(&mut conn).await.ok()?;
            (n == 20).then_some(())
        }
    })
    .await;
    relay.shutdown().await.unwrap();
    let received = take_stream(&mut conn, &stream).await;
    assert_eq!(received.len(), 20, "each event exactly once");
    let got: HashSet<_> = received.iter().map(|e| e.user_id.clone()).collect();
    assert_eq!(got, users.iter().map(|u| u.user_id.clone()).collect());
    pg.drop().await;
}

/// Registers one email twice: 201, then 409 Conflict (a unique violation of `users.email`,
/// not a 500), and only the first registration's event reaches the stream.
async fn duplicate_email_is_409_conflict(database_url: String) {
    let url = test_url("OUTBOX_TEST_REDIS_URL", "redis://127.0.0.1:6379");
    let Ok(mut conn) = outbox::redis::connect(&url).await else {
        return unreachable_server("OUTBOX_TEST_REDIS_URL", &url, "unreachable").unwrap_or(());
    };
    let prefix = format!("auth:{}:", unique_suffix());
    let (base, relay) = serve(&settings(database_url, BusSettings::Redis { url, prefix: prefix.clone() })).await;
    let http = reqwest::Client::new();
    let register =
        || http.post(format!("{base}/users")).json(&serde_json::json!({ "email": "ada@example.com" })).send();

    let first = register().await.unwrap();
    assert_eq!(first.status(), 201);
    let user: UserRegistered = first.json().await.unwrap();
    let again = register().await.unwrap();
    assert_eq!(again.status(), 409);
    assert!(again.text().await.unwrap().contains("`ada@example.com` is already registered"));

    // Once the outbox is empty, every enqueued event is in the stream: only the first one.
    outbox_drained(&base).await;
    relay.shutdown().await.unwrap();
    let received = take_stream(&mut conn, &format!("{prefix}users.registered")).await;
    assert_eq!(received, vec![user], "the refused registration enqueued nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_duplicate_email_is_409_conflict() {
    let Some(pg) = PgSchema::create().await else { return };
    duplicate_email_is_409_conflict(pg.url.clone()).await;
    pg.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_duplicate_email_is_409_conflict() {
    let path = std::env::temp_dir().join(format!("auth-service-{}.db", unique_suffix()));
    duplicate_email_is_409_conflict(format!("sqlite://{}", path.display())).await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}
