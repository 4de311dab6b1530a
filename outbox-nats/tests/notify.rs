//! The NATS notifier wakes a subscriber on another connection.

mod common;

use std::time::Duration;

use futures::StreamExt;
use outbox_core::{MessageId, Notice, Notifier};
use outbox_nats::NatsNotifier;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_notice_reaches_a_relay_on_another_connection() {
    let (Some(writer), Some(relay)) = (common::client().await, common::client().await) else { return };
    let subject = format!("notify{}", outbox_core::testkit::unique_suffix());
    let listening = NatsNotifier::new(relay, &subject).unwrap();
    let mut notices = listening.subscribe().await.unwrap();
    let sending = NatsNotifier::new(writer.clone(), &subject).unwrap();
    // The server may take a moment to route to a brand-new subscription from another
    // connection: probe until one notice gets through, then send the real one.
    let probe = MessageId::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        sending.notify(&[probe]).await;
        if let Ok(Some(Ok(Notice::Committed(got)))) =
            tokio::time::timeout(Duration::from_millis(200), notices.next()).await
        {
            assert_eq!(got, vec![probe]);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no notice crossed connections within {WAIT:?}");
    }
    let ids = vec![MessageId::new(), MessageId::new()];
    sending.notify(&ids).await;
    sending.notify(&[]).await; // nothing committed: nothing sent
    let notice = loop {
        let n = tokio::time::timeout(WAIT, notices.next()).await.expect("a notice").unwrap().unwrap();
        if n != Notice::Committed(vec![probe]) {
            break n; // late duplicates of the probe are skipped
        }
    };
    assert_eq!(notice, Notice::Committed(ids));
    assert_eq!(sending.errors(), 0);
    assert!(NatsNotifier::new(writer, "bad subject").is_err());
}

#[tokio::test]
async fn an_empty_or_foreign_payload_is_a_plain_wake() {
    let Some(client) = common::client().await else { return };
    let subject = format!("notify{}", outbox_core::testkit::unique_suffix());
    let mut notices = NatsNotifier::new(client.clone(), &subject).unwrap().subscribe().await.unwrap();
    client.publish(subject.clone(), "hello".into()).await.unwrap();
    client.publish(subject, "".into()).await.unwrap();
    for _ in 0..2 {
        let notice = tokio::time::timeout(WAIT, notices.next()).await.expect("a notice").unwrap().unwrap();
        assert_eq!(notice, Notice::Wake);
    }
}

#[tokio::test]
async fn the_stream_ends_with_the_subscription_so_the_relay_resubscribes() {
    let Some(client) = common::client().await else { return };
    let subject = format!("notify{}", outbox_core::testkit::unique_suffix());
    let mut notices = NatsNotifier::new(client.clone(), &subject).unwrap().subscribe().await.unwrap();
    client.drain().await.unwrap();
    let end = tokio::time::timeout(WAIT, async {
        loop {
            if notices.next().await.is_none() {
                break;
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the notice stream must end when the subscription does");
}
