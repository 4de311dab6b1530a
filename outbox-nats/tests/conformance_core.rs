//! The shared Bus contract on core NATS, read back by a subscriber opened before publishing.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use outbox_core::Headers;
use outbox_core::testkit::bus::{BusFixture, BusProbe, Received};
use outbox_nats::{CoreNatsBus, SubjectMapping};
use tokio::sync::Mutex;

struct SubscriberProbe {
    sub: Mutex<async_nats::Subscriber>,
    got: Mutex<Vec<Received>>,
}

#[async_trait]
impl BusProbe for SubscriberProbe {
    async fn received(&self, _topic: &str, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut sub = self.sub.lock().await;
        let mut got = self.got.lock().await;
        while got.len() < n {
            let Ok(Some(m)) = tokio::time::timeout_at(deadline, sub.next()).await else { break };
            let mut headers = Headers::new();
            for (k, vs) in m.headers.iter().flat_map(|h| h.iter()) {
                if let Some(v) = vs.first() {
                    headers.insert(k.to_string(), v.as_str().to_owned());
                }
            }
            got.push(Received { payload: m.payload.to_vec(), headers });
        }
        got.clone()
    }
}

async fn setup() -> Option<BusFixture> {
    let client = common::client().await?;
    let topic = format!("core{}.conformance", outbox_core::testkit::unique_suffix());
    let sub = client.subscribe(topic.clone()).await.expect("subscribe");
    client.flush().await.expect("flush");
    let bus = CoreNatsBus::new(client, SubjectMapping::Identity);
    let probe = SubscriberProbe { sub: Mutex::new(sub), got: Mutex::default() };
    Some(BusFixture { bus: Arc::new(bus), topic, probe: Box::new(probe) })
}

outbox_core::bus_conformance!(setup);
