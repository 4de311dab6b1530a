//! Drives the service over HTTP against Postgres + NATS and Postgres + Redis, and checks that a
//! consumer of the stream receives each event exactly once.

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
    let http = reqwest::Client::new();
    let mut users = Vec::new();
    for i in 0..n {
        let r = http
            .post(format!("{base}/users"))
            .json(&serde_json::json!({ "email": format!("u{i}@example.com") }))
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

fn settings(bus: BusSettings) -> Settings {
    let s = unique_suffix();
    Settings {
        database_url: test_url("OUTBOX_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test"),
        bus,
        outbox_table: format!("auth_outbox_{s}"),
        users_table: format!("auth_users_{s}"),
    }
}

async fn postgres_up() -> bool {
    let url = test_url("OUTBOX_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test");
    match sea_orm::Database::connect(&url).await {
        Ok(_) => true,
        Err(e) => unreachable_server::<()>("OUTBOX_TEST_POSTGRES_URL", &url, e).is_some(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_and_nats_each_event_once() {
    let url = test_url("OUTBOX_TEST_NATS_URL", "nats://127.0.0.1:4222");
    let Ok(client) = outbox::nats::connect(&url).await else {
        return unreachable_server("OUTBOX_TEST_NATS_URL", &url, "unreachable").unwrap_or(());
    };
    if !postgres_up().await {
        return;
    }
    let sfx = unique_suffix();
    let (stream, prefix) = (format!("AUTH_{sfx}"), format!("auth{sfx}."));
    let settings = settings(BusSettings::Nats { url, stream: stream.clone(), prefix });
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
    eventually("GET /outbox/status to show an empty outbox", Duration::from_secs(10), || {
        let base = base.clone();
        async move {
            let st = status(&base).await;
            (st["pending"].as_u64() == Some(0) && st["dead"].as_u64() == Some(0)).then_some(())
        }
    })
    .await;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_and_redis_each_event_once() {
    let url = test_url("OUTBOX_TEST_REDIS_URL", "redis://127.0.0.1:6379");
    let Ok(mut conn) = outbox::redis::connect(&url).await else {
        return unreachable_server("OUTBOX_TEST_REDIS_URL", &url, "unreachable").unwrap_or(());
    };
    if !postgres_up().await {
        return;
    }
    let prefix = format!("auth:{}:", unique_suffix());
    let settings = settings(BusSettings::Redis { url, prefix: prefix.clone() });
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
    /// An XRANGE entry: its id and its field/value pairs.
    type Entry = (String, Vec<(String, Vec<u8>)>);
    let entries: Vec<Entry> =
        outbox::redis::redis::cmd("XRANGE").arg(&stream).arg("-").arg("+").query_async(&mut conn).await.unwrap();
    let received: Vec<UserRegistered> = entries
        .iter()
        .map(|(_, fields)| serde_json::from_slice(&fields.iter().find(|(k, _)| k == "payload").unwrap().1).unwrap())
        .collect();
    assert_eq!(received.len(), 20, "each event exactly once");
    let got: HashSet<_> = received.iter().map(|e| e.user_id.clone()).collect();
    assert_eq!(got, users.iter().map(|u| u.user_id.clone()).collect());
    let _: i64 = outbox::redis::redis::cmd("DEL").arg(&stream).query_async(&mut conn).await.unwrap();
}
