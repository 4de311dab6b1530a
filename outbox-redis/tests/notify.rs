//! The Redis notifier: notices reach subscribers, and a lost connection is never silent.

mod common;

use std::time::Duration;

use futures::StreamExt;
use outbox_core::{MessageId, Notice, Notifier};
use outbox_redis::{DEFAULT_HEARTBEAT, RedisNotifier};

use common::server::Server;

fn channel() -> String {
    format!("notify:{}", outbox_core::testkit::unique_suffix())
}

#[tokio::test]
async fn a_notice_reaches_a_subscriber_with_its_ids() {
    if common::conn().await.is_none() {
        return;
    }
    let channel = channel();
    let relay = RedisNotifier::connect(&common::url(), &channel).await.unwrap();
    let mut notices = relay.subscribe().await.unwrap();
    let writer = RedisNotifier::connect(&common::url(), &channel).await.unwrap();
    let ids = vec![MessageId::new(), MessageId::new()];
    writer.notify(&ids).await;
    let got = tokio::time::timeout(Duration::from_secs(10), notices.next()).await.expect("a notice").unwrap().unwrap();
    assert_eq!(got, Notice::Committed(ids));
    assert_eq!(writer.errors(), 0);
}

#[tokio::test]
async fn bad_settings_are_configuration_errors() {
    let err = RedisNotifier::connect(&common::url(), "").await.unwrap_err();
    assert!(err.to_string().contains("redis.notify_channel"), "{err}");
    let err = RedisNotifier::connect("nope://x", "c").await.unwrap_err();
    assert!(err.to_string().contains("redis.url"), "{err}");
    if common::conn().await.is_some() {
        let n = RedisNotifier::connect(&common::url(), "c").await.unwrap();
        let err = n.heartbeat(Duration::ZERO).unwrap_err();
        assert!(err.to_string().contains("redis.notify_heartbeat"), "{err}");
    }
}

#[tokio::test]
async fn the_heartbeat_takes_10_ms_to_10_min_as_documented() {
    if common::conn().await.is_none() {
        return;
    }
    let n = RedisNotifier::connect(&common::url(), channel()).await.unwrap();
    for ok in [Duration::from_millis(10), DEFAULT_HEARTBEAT, Duration::from_secs(600)] {
        assert!(n.clone().heartbeat(ok).is_ok(), "{ok:?}");
    }
    for bad in [Duration::from_micros(9_999), Duration::from_secs(600) + Duration::from_nanos(1)] {
        let err = n.clone().heartbeat(bad).unwrap_err();
        assert!(
            err.to_string().contains("redis.notify_heartbeat") && err.to_string().contains("10 ms and 10 min"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn a_killed_server_ends_the_subscription_with_an_error_and_notify_only_counts() {
    let Some(server) = Server::start().await else { return };
    let notifier = RedisNotifier::connect(&server.url(), channel()).await.unwrap();
    let mut notices = notifier.subscribe().await.unwrap();
    drop(server);
    let item = tokio::time::timeout(Duration::from_secs(10), notices.next()).await.expect("the loss is reported");
    assert!(matches!(item, Some(Err(ref e)) if e.is_temporary()), "{item:?}");
    assert!(notices.next().await.is_none(), "the stream ends after the error");
    assert!(notifier.subscribe().await.is_err(), "resubscribing fails while the server is down");
    notifier.notify(&[MessageId::new()]).await; // never fails the writer
    assert_eq!(notifier.errors(), 1);
}

#[tokio::test]
async fn a_stalled_server_is_found_by_the_heartbeat() {
    let Some(server) = Server::start().await else { return };
    let notifier =
        RedisNotifier::connect(&server.url(), channel()).await.unwrap().heartbeat(Duration::from_millis(100)).unwrap();
    let mut notices = notifier.subscribe().await.unwrap();
    server.stall();
    let item = tokio::time::timeout(Duration::from_secs(10), notices.next()).await.expect("the stall is reported");
    server.resume();
    match item {
        Some(Err(e)) => assert!(e.to_string().contains("heartbeat"), "{e}"),
        other => panic!("expected a heartbeat error, got {other:?}"),
    }
}
