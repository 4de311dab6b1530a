//! Each message gets the outcome of its own delivery report: a record too large or a topic
//! that does not exist is permanent, a broker that does not answer is retryable, and the
//! rest of the batch is published all the same.

mod common;

use std::time::Duration;

use common::{TestTopic, stored};
use outbox_core::{Bus, NewMessage, PublishOutcome};
use outbox_kafka::KafkaBus;

fn permanent(o: &PublishOutcome, needle: &str) -> bool {
    matches!(o, PublishOutcome::Permanent(r) if r.contains(needle))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_too_large_is_permanent_and_the_rest_is_published() {
    let Some(bus) = common::bus(|b| b).await else { return };
    let topic = TestTopic::create(&common::url(), "too-large", 1, &[]).await;
    // Above librdkafka's default `message.max.bytes` (1,000,000): refused before sending.
    let batch = [
        stored(NewMessage::new(&topic.name, "before").key("a")),
        stored(NewMessage::new(&topic.name, vec![b'x'; 2_000_000]).key("b")),
        stored(NewMessage::new(&topic.name, "after").key("c")),
    ];
    let outcomes = bus.publish(&batch).await;
    assert_eq!(outcomes[0], PublishOutcome::Published);
    assert!(permanent(&outcomes[1], "too large"), "{outcomes:?}");
    assert_eq!(outcomes[2], PublishOutcome::Published);
    let got = topic.read(2, Duration::from_secs(20)).await;
    let payloads: Vec<_> = got.iter().map(|r| r.payload.clone()).collect();
    assert_eq!(payloads, [b"before".to_vec(), b"after".to_vec()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_permanent_when_auto_creation_is_off() {
    let Some(bus) = common::bus(|b| b.auto_create_topics(false)).await else { return };
    let topic = TestTopic::create(&common::url(), "exists", 1, &[]).await;
    let missing = format!("{}-missing", topic.name);
    let batch = [stored(NewMessage::new(&missing, "lost?")), stored(NewMessage::new(&topic.name, "kept"))];
    let outcomes = bus.publish(&batch).await;
    assert!(permanent(&outcomes[0], &missing), "{outcomes:?}");
    assert_eq!(outcomes[1], PublishOutcome::Published);
    assert_eq!(common::partition_count(&common::url(), &missing).await, None, "the topic was not created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_illegal_topic_name_is_permanent_without_a_round_trip() {
    let bus = KafkaBus::builder("127.0.0.1:1").build().unwrap();
    let outcomes = bus.publish(&[stored(NewMessage::new("orders/eu", "x"))]).await;
    assert!(permanent(&outcomes[0], "legal characters"), "{outcomes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_broker_is_retryable_after_the_delivery_timeout() {
    // Nothing listens on a port that was just free.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let bus = KafkaBus::builder(format!("127.0.0.1:{port}"))
        .delivery_timeout(Duration::from_secs(1))
        .request_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    assert!(bus.check(Duration::from_millis(500)).await.unwrap_err().is_temporary());
    let batch: Vec<_> = (0..3).map(|i| stored(NewMessage::new("orders", format!("{i}")))).collect();
    let outcomes = bus.publish(&batch).await;
    assert_eq!(outcomes.len(), 3);
    for o in &outcomes {
        assert!(matches!(o, PublishOutcome::Retryable(r) if r.contains("orders")), "{outcomes:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_the_guarantees_rest_on_cannot_be_overridden() {
    let err = KafkaBus::builder("127.0.0.1:9092").option("enable.idempotence", "false").build().unwrap_err();
    assert!(err.to_string().contains("kafka.options"), "{err}");
    let err = KafkaBus::builder("127.0.0.1:9092").option("no.such.property", "1").build().unwrap_err();
    assert!(err.to_string().contains("no.such.property"), "{err}");
}
