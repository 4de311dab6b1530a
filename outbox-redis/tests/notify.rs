//! The Redis notifier wakes a subscriber on another connection.

mod common;

use std::time::Duration;

use futures::StreamExt;
use outbox_core::{MessageId, Notice, Notifier};
use outbox_redis::RedisNotifier;

#[tokio::test]
async fn a_notice_reaches_a_subscriber() {
    if common::conn().await.is_none() {
        return;
    }
    let channel = format!("notify:{}", outbox_core::testkit::unique_suffix());
    let relay = RedisNotifier::connect(&common::url(), &channel).await.unwrap();
    let mut notices = relay.subscribe().await.unwrap();
    let writer = RedisNotifier::connect(&common::url(), &channel).await.unwrap();
    let ids = vec![MessageId::new()];
    writer.notify(&ids).await;
    let got = tokio::time::timeout(Duration::from_secs(10), notices.next()).await.expect("a notice").unwrap().unwrap();
    assert_eq!(got, Notice::Committed(ids));
    assert!(RedisNotifier::connect(&common::url(), "").await.is_err());
}
