//! Bus conformance cases. Each takes a fixture with a fresh topic the bus can publish to.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::bus::Bus;
use crate::message::{HEADER_KEY, HEADER_MESSAGE_ID, HEADER_TOPIC, Headers, NewMessage, OutboxMessage, now_millis};

/// Generates one `#[tokio::test]` per bus case. `$setup` is an `async fn() -> BusFixture`
/// (or `Option<BusFixture>`, where `None` skips the case because its server is unreachable).
#[macro_export]
macro_rules! bus_conformance {
    ($setup:path) => {
        $crate::bus_conformance!(@cases $setup;
            empty_batch_has_no_outcomes,
            one_outcome_per_message,
            payload_and_headers_round_trip,
            batch_of_one_thousand
        );
    };
    (@cases $setup:path; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(fixture) = $crate::testkit::IntoFixture::into_fixture($setup().await) else {
                    return;
                };
                $crate::testkit::bus::$case(fixture).await;
            }
        )*
    };
}

/// A message as a consumer of the broker received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// Every header the broker delivered.
    pub headers: Headers,
}

/// Reads back what a bus published to the fixture's topic.
#[async_trait]
pub trait BusProbe: Send + Sync {
    /// Waits until at least `n` messages were received on `topic` (or `timeout` passes) and
    /// returns all received so far, in broker order.
    async fn received(&self, topic: &str, n: usize, timeout: Duration) -> Vec<Received>;
}

/// What a bus case needs: the bus, a fresh topic it accepts, and a way to read it back.
pub struct BusFixture {
    /// The bus under test.
    pub bus: Arc<dyn Bus>,
    /// A topic unique to this case.
    pub topic: String,
    /// Reads what arrived.
    pub probe: Box<dyn BusProbe>,
}

fn stored(m: NewMessage) -> OutboxMessage {
    OutboxMessage::from_new(m, now_millis())
}

const WAIT: Duration = Duration::from_secs(20);

/// An empty batch publishes nothing and returns no outcomes.
pub async fn empty_batch_has_no_outcomes(f: BusFixture) {
    assert!(f.bus.publish(&[]).await.is_empty());
}

/// Three messages give three delivered outcomes, and three messages arrive.
pub async fn one_outcome_per_message(f: BusFixture) {
    let batch: Vec<_> = (0..3).map(|i| stored(NewMessage::new(f.topic.clone(), format!("m{i}")))).collect();
    let outcomes = f.bus.publish(&batch).await;
    assert_eq!(outcomes.len(), 3);
    assert!(outcomes.iter().all(|o| o.is_delivered()), "{outcomes:?}");
    let got = f.probe.received(&f.topic, 3, WAIT).await;
    let payloads: HashSet<_> = got.iter().map(|r| r.payload.clone()).collect();
    assert_eq!(payloads, HashSet::from([b"m0".to_vec(), b"m1".to_vec(), b"m2".to_vec()]));
}

/// Payload bytes and every header (id, topic, key, the message's own) survive the trip.
pub async fn payload_and_headers_round_trip(f: BusFixture) {
    let payload: Vec<u8> = (0u8..=255).collect();
    let m = stored(
        NewMessage::new(f.topic.clone(), payload.clone())
            .key("order-42")
            .header("tenant", "acme")
            .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    let outcomes = f.bus.publish(std::slice::from_ref(&m)).await;
    assert!(outcomes[0].is_delivered(), "{outcomes:?}");
    let got = f.probe.received(&f.topic, 1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, payload);
    let h = &got[0].headers;
    assert_eq!(h.get(HEADER_MESSAGE_ID).map(String::as_str), Some(m.id.to_string().as_str()));
    assert_eq!(h.get(HEADER_KEY).map(String::as_str), Some("order-42"));
    assert_eq!(h.get(HEADER_TOPIC).map(String::as_str), Some(f.topic.as_str()));
    assert_eq!(h.get("tenant").map(String::as_str), Some("acme"));
    assert!(h.get("traceparent").is_some_and(|t| t.starts_with("00-4bf92f")));
}

/// A batch of 1,000 messages: 1,000 delivered outcomes and 1,000 distinct ids received.
pub async fn batch_of_one_thousand(f: BusFixture) {
    let batch: Vec<_> = (0..1000).map(|i| stored(NewMessage::new(f.topic.clone(), format!("{i:0>200}")))).collect();
    let outcomes = f.bus.publish(&batch).await;
    assert_eq!(outcomes.len(), 1000);
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.is_delivered()).collect();
    assert!(failed.is_empty(), "{} failed, first: {:?}", failed.len(), failed.first());
    let got = f.probe.received(&f.topic, 1000, WAIT).await;
    let ids: HashSet<_> = got.iter().filter_map(|r| r.headers.get(HEADER_MESSAGE_ID).cloned()).collect();
    assert_eq!(ids.len(), 1000);
}
