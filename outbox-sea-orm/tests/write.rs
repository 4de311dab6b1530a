//! The write side on every backend: enqueue inside the caller's transaction, the transaction
//! helper's commit-then-notify, and input validation that leaves the transaction usable.
#![cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::RecordingNotifier;
use outbox_core::{Error, Lease, NewMessage, OutboxStore};
use outbox_sea_orm::SqlStore;
use sea_orm::TransactionTrait;

const TTL: Duration = Duration::from_secs(30);

crate::per_backend!(
    enqueue_in_then_rollback_stores_nothing,
    transaction_commits_then_notifies_once,
    transaction_error_rolls_back_without_notifying,
    invalid_message_leaves_the_transaction_usable,
    large_batches_keep_input_order,
    duplicate_ids_are_rejected,
);

async fn enqueue_in_then_rollback_stores_nothing(store: SqlStore) {
    let txn = store.connection().begin().await.unwrap();
    let ids = store.enqueue_in(&txn, vec![NewMessage::new("write.rollback", "x")]).await.unwrap();
    txn.rollback().await.unwrap();
    assert_eq!(store.stats().await.unwrap().pending, 0);
    assert!(store.claim_ids(&ids, &Lease::new(TTL)).await.unwrap().is_empty());

    let txn = store.connection().begin().await.unwrap();
    let ids = store.enqueue_in(&txn, vec![NewMessage::new("write.commit", "y")]).await.unwrap();
    txn.commit().await.unwrap();
    let claimed = store.claim_ids(&ids, &Lease::new(TTL)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].payload, b"y");
}

async fn transaction_commits_then_notifies_once(store: SqlStore) {
    let notifier = Arc::new(RecordingNotifier::default());
    let store = store.with_notifier(notifier.clone());
    let events = vec![NewMessage::new("write.tx", "1").key("k"), NewMessage::new("write.tx", "2").key("k")];
    let expected: Vec<_> = events.iter().map(|m| m.id).collect();

    let value = store.transaction(move |_txn| Box::pin(async move { Ok::<_, Error>(("done", events)) })).await.unwrap();

    assert_eq!(value, "done");
    assert_eq!(notifier.calls(), vec![expected.clone()], "one notify, after commit, with every id in order");
    assert_eq!(store.stats().await.unwrap().pending, 2);
    let head = store.claim_ids(&expected, &Lease::new(TTL)).await.unwrap();
    assert_eq!(head.len(), 1, "both committed, in key order");
    assert_eq!(head[0].id, expected[0]);
}

async fn transaction_error_rolls_back_without_notifying(store: SqlStore) {
    let notifier = Arc::new(RecordingNotifier::default());
    let store = store.with_notifier(notifier.clone());

    // The closure fails after writing: its write is rolled back.
    let writer = store.clone();
    let failed = store
        .transaction(move |txn| {
            Box::pin(async move {
                writer.enqueue_in(txn, vec![NewMessage::new("write.biz", "written by the work")]).await?;
                Err::<((), Vec<NewMessage>), _>(Error::permanent("app", "business rule violated", None))
            })
        })
        .await;
    assert!(matches!(failed, Err(Error::Backend { backend: "app", .. })), "{failed:?}");

    // The work succeeds but returns an invalid event: nothing of the transaction survives.
    let writer = store.clone();
    let invalid = store
        .transaction(move |txn| {
            Box::pin(async move {
                writer.enqueue_in(txn, vec![NewMessage::new("write.biz", "written by the work")]).await?;
                Ok::<_, Error>(((), vec![NewMessage::new("t".repeat(256), "too long a topic")]))
            })
        })
        .await;
    assert!(matches!(invalid, Err(Error::InvalidMessage { .. })), "{invalid:?}");

    assert_eq!(store.stats().await.unwrap().pending, 0, "both transactions rolled back");
    assert!(notifier.calls().is_empty(), "no notify after a rollback");
}

async fn invalid_message_leaves_the_transaction_usable(store: SqlStore) {
    let txn = store.connection().begin().await.unwrap();
    let long_topic = NewMessage::new("t".repeat(256), "x");
    let err = store.enqueue_in(&txn, vec![long_topic]).await.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidMessage { reason, .. } if reason.contains("topic is 256 bytes, the limit is 255")),
        "{err}"
    );
    let long_key = NewMessage::new("write.invalid", "x").key("k".repeat(256));
    let err = store.enqueue_in(&txn, vec![NewMessage::new("write.invalid", "ok"), long_key]).await.unwrap_err();
    assert!(matches!(&err, Error::InvalidMessage { reason, .. } if reason.contains("key is 256 bytes")), "{err}");

    let max = NewMessage::new("t".repeat(255), "fits").key("k".repeat(255));
    let ids = store.enqueue_in(&txn, vec![max]).await.expect("the transaction is still usable");
    txn.commit().await.expect("and commits");
    let claimed = store.claim_ids(&ids, &Lease::new(TTL)).await.unwrap();
    assert_eq!(claimed.len(), 1, "only the valid message was stored");
    assert_eq!(claimed[0].topic.len(), 255);
    assert_eq!(claimed[0].key.as_ref().map(String::len), Some(255));
}

async fn large_batches_keep_input_order(store: SqlStore) {
    // More rows than one MySQL/SQLite INSERT takes: several statements, one transaction.
    let batch: Vec<_> = (0..2_500).map(|i| NewMessage::new("write.large", i.to_string())).collect();
    let expected: Vec<_> = batch.iter().map(|m| m.id).collect();
    assert_eq!(store.enqueue(batch).await.unwrap(), expected);
    let claimed = store.claim_due(5_000, Duration::ZERO, &Lease::new(TTL)).await.unwrap();
    let got: Vec<_> = claimed.iter().map(|m| m.id).collect();
    assert_eq!(got, expected, "seq follows input order");
}

async fn duplicate_ids_are_rejected(store: SqlStore) {
    let m = NewMessage::new("write.dup", "x");
    store.enqueue(vec![m.clone()]).await.unwrap();
    let err = store.enqueue(vec![m]).await.unwrap_err();
    assert!(!err.is_temporary(), "{err}");
    assert!(err.to_string().contains("already stored"), "{err}");
    assert_eq!(store.stats().await.unwrap().pending, 1);
}
