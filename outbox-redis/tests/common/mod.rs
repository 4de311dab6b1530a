//! Shared test setup: a connection to the test server and a stream probe.
#![allow(dead_code, unreachable_pub)]

#[cfg(feature = "cluster")]
pub mod cluster;
pub mod server;

use std::time::Duration;

use async_trait::async_trait;
use outbox_core::testkit::bus::{BusProbe, Received};
use outbox_core::testkit::{test_url, unreachable_server};
use outbox_core::{Headers, OutboxMessage};
use outbox_redis::{PAYLOAD_FIELD, connect};
use redis::Value;
use redis::aio::{ConnectionLike, ConnectionManager};

pub const VAR: &str = "OUTBOX_TEST_REDIS_URL";

pub fn url() -> String {
    test_url(VAR, "redis://127.0.0.1:6379")
}

/// A connection, or `None` (skip) when the server is unreachable outside strict mode.
pub async fn conn() -> Option<ConnectionManager> {
    let url = url();
    match connect(&url).await {
        Ok(c) => Some(c),
        Err(e) => unreachable_server(VAR, &url, e),
    }
}

pub fn prefix() -> String {
    format!("test:{}:", outbox_core::testkit::unique_suffix())
}

/// Every entry of `stream`, as payload + headers (on a single node or a cluster).
pub async fn read(conn: &mut impl ConnectionLike, stream: &str) -> Vec<Received> {
    let entries: Vec<Value> =
        redis::cmd("XRANGE").arg(stream).arg("-").arg("+").query_async(conn).await.unwrap_or_default();
    entries
        .into_iter()
        .filter_map(|e| match e {
            Value::Array(mut parts) if parts.len() == 2 => parts.pop(),
            _ => None,
        })
        .map(|fields| {
            let Value::Array(kv) = fields else { panic!("fields are an array") };
            let mut payload = Vec::new();
            let mut headers = Headers::new();
            for pair in kv.chunks(2) {
                let (Value::BulkString(k), Value::BulkString(v)) = (&pair[0], &pair[1]) else { continue };
                let k = String::from_utf8_lossy(k).into_owned();
                if k == PAYLOAD_FIELD {
                    payload = v.clone();
                } else {
                    headers.insert(k, String::from_utf8_lossy(v).into_owned());
                }
            }
            Received { payload, headers }
        })
        .collect()
}

/// The conformance fixture of `bus`, publishing topic `conformance` into `<prefix>conformance`.
pub fn conformance_fixture<C>(
    bus: outbox_redis::RedisStreamsBus,
    conn: C,
    prefix: &str,
) -> outbox_core::testkit::bus::BusFixture
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    let topic = "conformance".to_owned();
    let stream = format!("{prefix}{topic}");
    outbox_core::testkit::bus::BusFixture {
        bus: std::sync::Arc::new(bus),
        topic,
        probe: Box::new(StreamProbe { conn, stream }),
    }
}

pub struct StreamProbe<C = ConnectionManager> {
    pub conn: C,
    pub stream: String,
}

#[async_trait]
impl<C: ConnectionLike + Clone + Send + Sync + 'static> BusProbe for StreamProbe<C> {
    async fn received(&self, _topic: &str, n: usize, timeout: Duration) -> Vec<Received> {
        let mut conn = self.conn.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut got = read(&mut conn, &self.stream).await;
        while got.len() < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            got = read(&mut conn, &self.stream).await;
        }
        let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(&self.stream).query_async(&mut conn).await;
        got
    }
}

pub fn stored(msg: outbox_core::NewMessage) -> OutboxMessage {
    OutboxMessage::from_new(msg, outbox_core::message::now_millis())
}

pub async fn xlen(conn: &mut impl ConnectionLike, stream: &str) -> u64 {
    redis::cmd("XLEN").arg(stream).query_async(conn).await.unwrap()
}

pub async fn del(conn: &mut impl ConnectionLike, keys: &[&str]) {
    let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(keys).query_async(conn).await;
}
