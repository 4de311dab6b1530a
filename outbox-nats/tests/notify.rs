//! The NATS notifier wakes a subscriber on another connection.

mod common;

use std::time::Duration;

use futures::StreamExt;
use outbox_core::{MessageId, Notice, Notifier};
use outbox_nats::NatsNotifier;

#[tokio::test]
async fn a_notice_reaches_a_relay_on_another_connection() {
    let (Some(writer), Some(relay)) = (common::client().await, common::client().await) else { return };
    let subject = format!("notify{}", outbox_core::testkit::unique_suffix());
    let listening = NatsNotifier::new(relay, &subject).unwrap();
    let mut notices = listening.subscribe().await.unwrap();
    let sending = NatsNotifier::new(writer.clone(), &subject).unwrap();
    let ids = vec![MessageId::new(), MessageId::new()];
    sending.notify(&ids).await;
    writer.flush().await.unwrap();
    let notice =
        tokio::time::timeout(Duration::from_secs(10), notices.next()).await.expect("a notice").unwrap().unwrap();
    assert_eq!(notice, Notice::Committed(ids));
    assert!(NatsNotifier::new(writer, "bad subject").is_err());
}
