//! The consumer stores what an outbox bus published once (JetStream, through the inbox) or
//! prints it (Redis), with the outbox headers.

use std::process::Command;
use std::sync::Arc;

use outbox::nats::{JetStreamBus, StreamSpec, ensure_stream};
use outbox::redis::RedisStreamsBus;
use outbox::{Bus, NewMessage, OutboxMessage};

fn messages(topic: &str) -> Vec<OutboxMessage> {
    (0..3)
        .map(|i| OutboxMessage::from_new(NewMessage::new(topic, format!("{{\"n\":{i}}}")).key(format!("k{i}")), 0))
        .collect()
}

fn run_consumer(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_consumer")).args(args).output().expect("run consumer");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_jetstream_events_once_through_the_inbox() {
    let url = outbox::testkit::test_url("OUTBOX_TEST_NATS_URL", "nats://127.0.0.1:4222");
    let client = match outbox::nats::connect(&url).await {
        Ok(c) => c,
        Err(e) => return outbox::testkit::unreachable_server("OUTBOX_TEST_NATS_URL", &url, e).unwrap_or(()),
    };
    let suffix = outbox::testkit::unique_suffix();
    let stream = format!("CONSUMER_{suffix}");
    let bus = Arc::new(JetStreamBus::builder(client).subject_prefix(format!("c{suffix}.")).build().unwrap());
    ensure_stream(bus.context(), &StreamSpec::new(&stream, [format!("c{suffix}.>")])).await.unwrap();
    let batch = messages("users.registered");
    assert!(bus.publish(&batch).await.iter().all(|o| o.is_delivered()));
    let inbox = std::env::temp_dir().join(format!("consumer-example-{suffix}.db"));
    let run = || {
        let (url, stream, inbox) = (url.clone(), stream.clone(), inbox.display().to_string());
        let (filter, dead) = (format!("c{suffix}.users.>"), format!("c{suffix}.dead"));
        tokio::task::spawn_blocking(move || {
            run_consumer(&[
                "--max",
                "3",
                "nats",
                "--url",
                &url,
                "--stream",
                &stream,
                "--filter",
                &filter,
                "--dead-letter",
                &dead,
                "--inbox",
                &inbox,
            ])
        })
    };
    let stdout = run().await.unwrap();
    for m in &batch {
        assert!(stdout.contains(&format!("event id={}", m.id)), "{stdout}");
    }
    assert!(stdout.contains("key=k1"));

    // Replaying the stream to a fresh durable consumer of the same name: every event is a
    // duplicate, none is stored again.
    bus.context().delete_consumer_from_stream("consumer", &stream).await.unwrap();
    let stdout = run().await.unwrap();
    for m in &batch {
        assert!(stdout.contains(&format!("duplicate id={} skipped", m.id)), "{stdout}");
    }
    assert!(!stdout.contains("event id="), "{stdout}");
    let _ = bus.context().delete_stream(&stream).await;
    let _ = std::fs::remove_file(&inbox);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prints_redis_events_with_their_ids() {
    let url = outbox::testkit::test_url("OUTBOX_TEST_REDIS_URL", "redis://127.0.0.1:6379");
    let conn = match outbox::redis::connect(&url).await {
        Ok(c) => c,
        Err(e) => return outbox::testkit::unreachable_server("OUTBOX_TEST_REDIS_URL", &url, e).unwrap_or(()),
    };
    let prefix = format!("consumer:{}:", outbox::testkit::unique_suffix());
    let bus = RedisStreamsBus::builder(conn.clone()).stream_prefix(&prefix).build().await.unwrap();
    let batch = messages("users.registered");
    assert!(bus.publish(&batch).await.iter().all(|o| o.is_delivered()));
    let stream = format!("{prefix}users.registered");
    let stdout = tokio::task::spawn_blocking({
        let (url, stream) = (url.clone(), stream.clone());
        move || run_consumer(&["--max", "3", "redis", "--url", &url, "--streams", &stream])
    })
    .await
    .unwrap();
    for m in &batch {
        assert!(stdout.contains(&format!("id={}", m.id)), "{stdout}");
    }
    let mut conn = conn;
    let _: i64 = outbox::redis::redis::cmd("DEL").arg(&stream).query_async(&mut conn).await.unwrap();
}
