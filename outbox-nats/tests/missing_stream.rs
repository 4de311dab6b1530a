//! A subject no stream takes: retried (never dead-lettered at once), logged as an error a few
//! times rather than per message, and reported by the bus's health until the stream exists.

mod common;

use std::time::Duration;

use outbox_core::testkit::{eventually, unique_suffix};
use outbox_core::{Bus, NewMessage, PublishOutcome};
use outbox_nats::{JetStreamBus, StreamSpec, connect, ensure_stream};

use common::{LogCapture, OwnServer, stored};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_missing_stream_is_retryable_until_the_stream_is_created() {
    let Some(client) = common::client().await else { return };
    let suffix = unique_suffix();
    let prefix = format!("nos{suffix}");
    let bus = JetStreamBus::builder(client)
        .subject_prefix(format!("{prefix}."))
        .ack_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let subject = format!("{prefix}.orders");
    let m = stored(NewMessage::new("orders", "x"));
    assert_eq!(bus.health(), Ok(()));
    match &bus.publish(std::slice::from_ref(&m)).await[0] {
        PublishOutcome::Retryable(reason) => assert!(reason.contains(&subject), "{reason}"),
        other => panic!("a missing stream must be retried, got {other:?}"),
    }
    let missing = bus.clone().health().expect_err("health fails while the stream is missing");
    assert_eq!(missing.subjects, vec![subject.clone()]);
    assert!(missing.to_string().contains(&subject), "{missing}");

    let name = format!("NOS_{suffix}");
    ensure_stream(bus.context(), &StreamSpec::new(&name, [format!("{prefix}.>")])).await.unwrap();
    eventually("a publish to succeed once the stream exists", WAIT, || {
        let (bus, m) = (&bus, &m);
        async move { (bus.publish(std::slice::from_ref(m)).await[0].is_delivered()).then_some(()) }
    })
    .await;
    assert_eq!(bus.health(), Ok(()), "the success clears the health failure");
    let _ = bus.context().delete_stream(&name).await;
}

#[tokio::test]
async fn a_missing_stream_is_logged_as_an_error_once_not_per_message() {
    let Some(client) = common::client().await else { return };
    let (logs, _guard) = LogCapture::start();
    let prefix = format!("nos{}", unique_suffix());
    let bus = JetStreamBus::builder(client).subject_prefix(format!("{prefix}.")).build().unwrap();
    let batch: Vec<_> = (0..5).map(|i| stored(NewMessage::new("orders", format!("{i}")))).collect();
    for _ in 0..2 {
        let outcomes = bus.publish(&batch).await;
        assert!(outcomes.iter().all(|o| matches!(o, PublishOutcome::Retryable(_))), "{outcomes:?}");
    }
    assert_eq!(logs.count(tracing::Level::ERROR, &format!("{prefix}.orders")), 1, "one error for ten messages");
}

#[tokio::test]
async fn without_require_stream_a_missing_stream_is_retried_quietly() {
    let Some(client) = common::client().await else { return };
    let (logs, _guard) = LogCapture::start();
    let prefix = format!("nos{}", unique_suffix());
    let bus = JetStreamBus::builder(client)
        .subject_prefix(format!("{prefix}."))
        .require_stream(false)
        .ack_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    match &bus.publish(&[stored(NewMessage::new("later", "x"))]).await[0] {
        PublishOutcome::Retryable(reason) => assert!(reason.contains("no JetStream stream takes subject"), "{reason}"),
        other => panic!("expected a retryable failure, got {other:?}"),
    }
    assert_eq!(bus.health(), Ok(()), "an expected missing stream is no health failure");
    assert_eq!(logs.count(tracing::Level::ERROR, &prefix), 0);
}

/// Counted on a private server, whose JetStream API counter nothing else moves.
#[tokio::test]
async fn the_stream_is_looked_up_once_per_subject_per_batch() {
    let Some(server) = OwnServer::start().await else { return };
    let client = connect(&server.url()).await.unwrap();
    let bus = JetStreamBus::builder(client.clone()).subject_prefix("lookups.").build().unwrap();
    let batch: Vec<_> =
        (0..20).map(|i| stored(NewMessage::new(if i % 2 == 0 { "a" } else { "b" }, format!("{i}")))).collect();
    let api_requests = || api_total(&client);
    let idle = api_requests().await;
    let before = api_requests().await;
    let per_query = before - idle;
    let outcomes = bus.publish(&batch).await;
    let after = api_requests().await;
    assert_eq!(after - before - per_query, 2, "one lookup for each of the two subjects");
    assert!(outcomes.iter().all(|o| matches!(o, PublishOutcome::Retryable(_))), "{outcomes:?}");
}

/// The account's JetStream API request count, read from the raw reply (async-nats's account
/// type wants fields a 2.9 server does not send).
async fn api_total(client: &async_nats::Client) -> u64 {
    let reply = client.request("$JS.API.INFO", "".into()).await.unwrap();
    let text = String::from_utf8(reply.payload.to_vec()).unwrap();
    let api = &text[text.find("\"api\"").expect("an api section")..];
    let total = &api[api.find("\"total\":").expect("a total") + "\"total\":".len()..];
    total[..total.find(|c: char| !c.is_ascii_digit()).unwrap()].parse().unwrap()
}
