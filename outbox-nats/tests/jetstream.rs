//! JetStream bus behaviour against the real server.

mod common;

use std::time::Duration;

use outbox_core::{Bus, NewMessage, PublishOutcome, RelayConfig};
use outbox_nats::{
    CoreNatsBus, JetStreamBus, NATS_MSG_ID, StreamSpec, SubjectMapping, check_duplicate_window, ensure_stream,
    required_duplicate_window,
};

use common::{TestStream, stored};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn entries_carry_nats_msg_id_key_and_headers() {
    let Some(client) = common::client().await else { return };
    let stream = TestStream::new(&client).await;
    let bus = JetStreamBus::builder(client).build().unwrap();
    let m = stored(NewMessage::new(stream.topic("users"), "hello").key("user-1").header("tenant", "acme"));
    assert_eq!(bus.publish(std::slice::from_ref(&m)).await, vec![PublishOutcome::Published]);
    let got = stream.read(1, WAIT).await;
    stream.delete().await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, b"hello");
    assert_eq!(got[0].headers[NATS_MSG_ID], m.id.to_string());
    assert_eq!(got[0].headers["Outbox-Key"], "user-1");
    assert_eq!(got[0].headers["tenant"], "acme");
}

#[tokio::test]
async fn the_same_message_published_twice_is_stored_once() {
    let Some(client) = common::client().await else { return };
    let stream = TestStream::new(&client).await;
    let bus = JetStreamBus::builder(client).build().unwrap();
    let m = stored(NewMessage::new(stream.topic("dedup"), "once"));
    assert_eq!(bus.publish(std::slice::from_ref(&m)).await, vec![PublishOutcome::Published]);
    assert_eq!(bus.publish(std::slice::from_ref(&m)).await, vec![PublishOutcome::Duplicate]);
    assert_eq!(stream.count().await, 1);
    stream.delete().await;
}

#[tokio::test]
async fn an_oversized_payload_fails_alone_and_permanently() {
    let Some(client) = common::client().await else { return };
    let max = client.server_info().max_payload;
    let stream = TestStream::new(&client).await;
    let bus = JetStreamBus::builder(client).build().unwrap();
    let batch = vec![
        stored(NewMessage::new(stream.topic("a"), "before")),
        stored(NewMessage::new(stream.topic("a"), vec![b'x'; max + 1])),
        stored(NewMessage::new(stream.topic("a"), "after")),
    ];
    let outcomes = bus.publish(&batch).await;
    assert_eq!(outcomes[0], PublishOutcome::Published);
    assert_eq!(outcomes[2], PublishOutcome::Published);
    match &outcomes[1] {
        PublishOutcome::Permanent(reason) => assert!(reason.contains("max_payload size limit"), "{reason}"),
        other => panic!("expected a permanent failure, got {other:?}"),
    }
    assert_eq!(stream.count().await, 2);
    stream.delete().await;
}

#[tokio::test]
async fn headers_count_toward_the_size_limit() {
    let Some(client) = common::client().await else { return };
    let max = client.server_info().max_payload;
    let stream = TestStream::new(&client).await;
    let bus = JetStreamBus::builder(client).build().unwrap();
    let fits_alone = stored(NewMessage::new(stream.topic("a"), vec![b'x'; max - 10]));
    let outcomes = bus.publish(&[fits_alone]).await;
    stream.delete().await;
    match &outcomes[0] {
        PublishOutcome::Permanent(reason) => assert!(reason.contains("headers"), "{reason}"),
        other => panic!("expected a permanent failure, got {other:?}"),
    }
}

#[tokio::test]
async fn a_custom_subject_mapping_routes_by_message() {
    let Some(client) = common::client().await else { return };
    let stream = TestStream::new(&client).await;
    let prefix = stream.prefix.clone();
    let bus = JetStreamBus::builder(client)
        .subjects(SubjectMapping::custom(move |m| {
            format!("{prefix}.{}.{}", m.topic, m.key.as_deref().unwrap_or("none"))
        }))
        .build()
        .unwrap();
    let m = stored(NewMessage::new("orders", "x").key("k1"));
    assert_eq!(bus.publish(&[m]).await, vec![PublishOutcome::Published]);
    let got = stream.read(1, WAIT).await;
    stream.delete().await;
    assert_eq!(got.len(), 1);
}

#[tokio::test]
async fn invalid_subjects_and_headers_are_permanent() {
    let Some(client) = common::client().await else { return };
    let bus = JetStreamBus::builder(client).build().unwrap();
    let batch = vec![
        stored(NewMessage::new("a..b", "x")),
        stored(NewMessage::new("has space", "x")),
        stored(NewMessage::new("events.>", "x")),
        stored(NewMessage::new("ok.subject", "x").header("bad:name", "v")),
    ];
    let outcomes = bus.publish(&batch).await;
    for (o, m) in outcomes.iter().zip(&batch) {
        assert!(matches!(o, PublishOutcome::Permanent(_)), "{}: {o:?}", m.topic);
    }
}

#[tokio::test]
async fn bad_bus_settings_name_their_field() {
    let Some(client) = common::client().await else { return };
    let err = JetStreamBus::builder(client.clone()).window(0).build().unwrap_err();
    assert!(err.to_string().contains("nats.window"), "{err}");
    let err = JetStreamBus::builder(client.clone()).ack_timeout(Duration::ZERO).build().unwrap_err();
    assert!(err.to_string().contains("nats.ack_timeout"), "{err}");
    let err = JetStreamBus::builder(client.clone()).subject_prefix("bad prefix").build().unwrap_err();
    assert!(err.to_string().contains("nats.subject_prefix"), "{err}");
    let err = CoreNatsBus::new(client.clone(), SubjectMapping::Identity).timeout(Duration::ZERO).unwrap_err();
    assert!(err.to_string().contains("nats.core_timeout"), "{err}");
    let err = outbox_nats::connect("http://nope").await.unwrap_err();
    assert!(err.to_string().contains("nats.url") || err.to_string().contains("http://nope"), "{err}");
    let err = outbox_nats::connect("nats://127.0.0.1:1").await.unwrap_err();
    assert!(err.is_temporary() && err.to_string().contains("127.0.0.1:1"), "{err}");
}

#[tokio::test]
async fn a_duplicate_window_shorter_than_claim_ttl_plus_retries_is_reported() {
    let Some(client) = common::client().await else { return };
    let js = async_nats::jetstream::new(client);
    let name = format!("W_{}", outbox_core::testkit::unique_suffix());
    let spec = outbox_nats::StreamSpec::new(&name, [format!("{}.>", name.to_lowercase())])
        .duplicate_window(Duration::from_secs(5));
    let config = outbox_nats::ensure_stream(&js, &spec).await.unwrap();
    let err = check_duplicate_window(&config, &RelayConfig::default()).unwrap_err();
    assert!(err.to_string().contains("nats.duplicate_window"), "{err}");
    let long = outbox_nats::StreamSpec::new(&name, [format!("{}.>", name.to_lowercase())]);
    let _ = js.delete_stream(&name).await;
    let config = outbox_nats::ensure_stream(&js, &long).await.unwrap();
    check_duplicate_window(&config, &RelayConfig::default()).unwrap();
    let _ = js.delete_stream(&name).await;
}

#[tokio::test]
async fn a_stream_ensured_for_a_relay_is_created_with_the_window_it_needs() {
    let Some(client) = common::client().await else { return };
    let js = async_nats::jetstream::new(client);
    let name = format!("W_{}", outbox_core::testkit::unique_suffix());
    let mut relay = RelayConfig::default();
    relay.claim_ttl = Duration::from_secs(120); // needs more than the default 10 minutes
    let spec = StreamSpec::new(&name, [format!("{}.>", name.to_lowercase())]).for_relay(&relay);
    let config = ensure_stream(&js, &spec).await.unwrap();
    let _ = js.delete_stream(&name).await;
    assert!(config.duplicate_window > Duration::from_secs(600), "{:?}", config.duplicate_window);
    assert!(config.duplicate_window >= required_duplicate_window(&relay));
    check_duplicate_window(&config, &relay).unwrap();
}

#[tokio::test]
async fn ensuring_an_existing_stream_warns_when_its_window_is_too_short_for_the_relay() {
    let Some(client) = common::client().await else { return };
    let (logs, _guard) = common::LogCapture::start();
    let js = async_nats::jetstream::new(client);
    let name = format!("W_{}", outbox_core::testkit::unique_suffix());
    let subjects = [format!("{}.>", name.to_lowercase())];
    ensure_stream(&js, &StreamSpec::new(&name, subjects.clone()).duplicate_window(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(logs.count(tracing::Level::WARN, &name), 0, "a new stream gets the window asked for");
    let spec = StreamSpec::new(&name, subjects).for_relay(&RelayConfig::default());
    let config = ensure_stream(&js, &spec).await.unwrap();
    let _ = js.delete_stream(&name).await;
    assert_eq!(config.duplicate_window, Duration::from_secs(5), "an existing stream is left as is");
    assert_eq!(logs.count(tracing::Level::WARN, &name), 1, "the short window is warned about once");
}

#[tokio::test]
async fn core_nats_bus_delivers_a_batch_to_a_subscriber() {
    use futures::StreamExt;
    let Some(client) = common::client().await else { return };
    let subject = format!("core{}", outbox_core::testkit::unique_suffix());
    let mut sub = client.subscribe(format!("{subject}.>")).await.unwrap();
    client.flush().await.unwrap();
    let bus = CoreNatsBus::new(client, SubjectMapping::Prefix(format!("{subject}.")));
    let batch: Vec<_> = (0..3).map(|i| stored(NewMessage::new("t", format!("{i}")))).collect();
    assert!(bus.publish(&batch).await.iter().all(|o| *o == PublishOutcome::Published));
    let mut got = Vec::new();
    while got.len() < 3 {
        let next = tokio::time::timeout(WAIT, sub.next()).await.expect("a message within the deadline");
        got.push(next.expect("subscription open"));
    }
    let first = &got[0];
    assert_eq!(first.payload.as_ref(), b"0");
    assert!(first.headers.as_ref().unwrap().get("Outbox-Message-Id").is_some());
}

#[tokio::test]
async fn core_nats_bus_fails_an_oversized_message_alone() {
    use futures::StreamExt;
    let Some(client) = common::client().await else { return };
    let max = client.server_info().max_payload;
    let subject = format!("core{}", outbox_core::testkit::unique_suffix());
    let mut sub = client.subscribe(format!("{subject}.>")).await.unwrap();
    client.flush().await.unwrap();
    let bus = CoreNatsBus::new(client, SubjectMapping::Prefix(format!("{subject}.")));
    let batch = vec![
        stored(NewMessage::new("t", "before")),
        stored(NewMessage::new("t", vec![b'x'; max + 1])),
        stored(NewMessage::new("t", "after")),
    ];
    let outcomes = bus.publish(&batch).await;
    assert_eq!(outcomes[0], PublishOutcome::Published);
    assert!(matches!(&outcomes[1], PublishOutcome::Permanent(r) if r.contains("max_payload")), "{outcomes:?}");
    assert_eq!(outcomes[2], PublishOutcome::Published);
    for expected in [&b"before"[..], b"after"] {
        let m = tokio::time::timeout(WAIT, sub.next()).await.expect("a message").expect("subscription open");
        assert_eq!(m.payload.as_ref(), expected);
    }
}
