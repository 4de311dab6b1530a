//! Shared test setup: a connection to the test server, a fresh stream, and a probe.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use async_nats::jetstream;
use async_trait::async_trait;
use outbox_core::testkit::bus::{BusProbe, Received};
use outbox_core::testkit::{test_url, unique_suffix, unreachable_server};
use outbox_core::{Headers, OutboxMessage};
use outbox_nats::{StreamSpec, connect, ensure_stream};

pub const VAR: &str = "OUTBOX_TEST_NATS_URL";

pub fn url() -> String {
    test_url(VAR, "nats://127.0.0.1:4222")
}

/// A client, or `None` (skip) when the server is unreachable outside strict mode.
pub async fn client() -> Option<async_nats::Client> {
    let url = url();
    match connect(&url).await {
        Ok(c) => Some(c),
        Err(e) => unreachable_server(VAR, &url, e),
    }
}

/// A fresh stream taking `<prefix>.>`, deleted when dropped.
pub struct TestStream {
    pub js: jetstream::Context,
    pub name: String,
    pub prefix: String,
}

impl TestStream {
    pub async fn new(client: &async_nats::Client) -> Self {
        let suffix = unique_suffix();
        let name = format!("T_{suffix}");
        let prefix = format!("t{suffix}");
        let js = jetstream::new(client.clone());
        ensure_stream(&js, &StreamSpec::new(&name, [format!("{prefix}.>")])).await.expect("create stream");
        Self { js, name, prefix }
    }

    pub fn topic(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    pub async fn count(&self) -> u64 {
        let mut s = self.js.get_stream(&self.name).await.expect("stream");
        s.info().await.expect("info").state.messages
    }

    /// Waits until `n` messages are stored (or `timeout`), then reads them all.
    pub async fn read(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.count().await < n as u64 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stream = self.js.get_stream(&self.name).await.expect("stream");
        let mut out = Vec::new();
        let last = stream.cached_info().state.last_sequence.max(self.count().await);
        for seq in 1..=last {
            if let Ok(m) = stream.get_raw_message(seq).await {
                let mut headers = Headers::new();
                for (k, vs) in m.headers.iter() {
                    if let Some(v) = vs.first() {
                        headers.insert(k.to_string(), v.as_str().to_owned());
                    }
                }
                out.push(Received { payload: m.payload.to_vec(), headers });
            }
        }
        out
    }

    pub async fn delete(&self) {
        let _ = self.js.delete_stream(&self.name).await;
    }
}

pub struct StreamProbe(pub TestStream);

#[async_trait]
impl BusProbe for StreamProbe {
    async fn received(&self, _topic: &str, n: usize, timeout: Duration) -> Vec<Received> {
        let got = self.0.read(n, timeout).await;
        self.0.delete().await;
        got
    }
}

pub fn stored(msg: outbox_core::NewMessage) -> OutboxMessage {
    OutboxMessage::from_new(msg, outbox_core::message::now_millis())
}
