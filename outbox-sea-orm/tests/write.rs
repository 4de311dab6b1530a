//! The write side on every backend: enqueue inside the caller's transaction, the transaction
//! guard's and helper's commit-then-notify, the errors of the caller's own rows, and input
//! validation that leaves the transaction usable.
#![cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::RecordingNotifier;
use outbox_core::{Error, Lease, MessageId, NewMessage, OutboxEvent, OutboxStore};
use outbox_sea_orm::schema::{entity, status};
use outbox_sea_orm::{OutboxTransaction, SqlStore, WriteError};
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, QueryFilter, QueryOrder, TransactionTrait};

const TTL: Duration = Duration::from_secs(30);

crate::per_backend!(
    enqueue_in_then_rollback_stores_nothing,
    own_transaction_then_notify_committed_wakes_the_listener,
    transaction_commits_then_notifies_once,
    transaction_error_rolls_back_without_notifying,
    invalid_message_leaves_the_transaction_usable,
    large_batches_keep_input_order,
    duplicate_ids_are_rejected,
    a_missing_table_of_yours_is_not_missing_schema,
    begin_commit_writes_rows_and_messages_then_notifies,
    dropped_transaction_writes_nothing_and_notifies_no_one,
    duplicate_in_your_unique_column_is_a_unique_violation,
    transaction_helper_keeps_your_db_errors,
    entity_reads_the_configured_table,
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

/// The path for callers who run their own transaction: `enqueue_in`, their commit, then the
/// public `notify_committed`, which reaches the store's notifier with the committed ids.
async fn own_transaction_then_notify_committed_wakes_the_listener(store: SqlStore) {
    let notifier = Arc::new(RecordingNotifier::default());
    let store = store.with_notifier(notifier.clone());
    let txn = store.connection().begin().await.unwrap();
    let ids = store.enqueue_in(&txn, vec![NewMessage::new("write.own", "o").key("k")]).await.unwrap();
    assert!(notifier.calls().is_empty(), "enqueue_in does not notify");
    txn.commit().await.unwrap();

    store.notify_committed(&ids).await;

    assert_eq!(notifier.calls(), vec![ids.clone()]);
    let claimed = store.claim_ids(&ids, &Lease::new(TTL)).await.unwrap();
    assert_eq!(claimed.len(), 1, "the notified id is committed and claimable");
    store.notify_committed(&[]).await;
    assert_eq!(notifier.calls().len(), 1, "an empty id list sends nothing");
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

async fn a_missing_table_of_yours_is_not_missing_schema(store: SqlStore) {
    let db = store.connection();
    let err = db.execute_unprepared("SELECT * FROM no_such_users").await.unwrap_err();
    let mapped = outbox_sea_orm::error::from_db_err(db.get_database_backend(), &store.config().table, err);
    assert!(!matches!(mapped, Error::MissingSchema { .. }), "{mapped:?}");
    assert!(!mapped.to_string().contains("outbox migration"), "{mapped}");
    assert!(mapped.to_string().contains("no_such_users"), "{mapped}");
}

/// The event the write-path cases enqueue.
#[derive(serde::Serialize)]
struct UserRegistered {
    user_id: i64,
    email: String,
}

impl OutboxEvent for UserRegistered {
    fn topic(&self) -> &str {
        "users.registered"
    }
    fn key(&self) -> Option<String> {
        Some(self.user_id.to_string())
    }
}

/// A business table of the test's own, beside its outbox table: `id`, and a unique `email`.
async fn users_table(store: &SqlStore) -> String {
    let users = format!("{}_users", store.config().table);
    let sql = format!("CREATE TABLE {users} (id INTEGER PRIMARY KEY, email VARCHAR(255) NOT NULL UNIQUE)");
    store.connection().execute_unprepared(&sql).await.unwrap();
    users
}

async fn insert_user(conn: &impl ConnectionTrait, users: &str, id: i64, email: &str) -> Result<(), DbErr> {
    conn.execute_unprepared(&format!("INSERT INTO {users} (id, email) VALUES ({id}, '{email}')")).await.map(|_| ())
}

/// Begins a transaction that inserts user `id` and enqueues their `UserRegistered`, left
/// open; returns it and the event's id.
async fn registration<'s>(
    store: &'s SqlStore,
    users: &str,
    id: i64,
    email: &str,
) -> Result<(OutboxTransaction<'s>, MessageId), WriteError> {
    let mut tx = store.begin().await?;
    insert_user(&*tx, users, id, email).await?;
    let event = tx.enqueue(&UserRegistered { user_id: id, email: email.into() })?;
    Ok((tx, event))
}

async fn count(conn: &impl ConnectionTrait, users: &str) -> i64 {
    let sql = format!("SELECT COUNT(*) AS n FROM {users}");
    let row = conn.query_one_raw(sea_orm::Statement::from_string(conn.get_database_backend(), sql)).await.unwrap();
    row.unwrap().try_get("", "n").unwrap()
}

async fn begin_commit_writes_rows_and_messages_then_notifies(store: SqlStore) {
    let notifier = Arc::new(RecordingNotifier::default());
    let store = store.with_notifier(notifier.clone());
    let users = users_table(&store).await;

    let (mut tx, event) = registration(&store, &users, 1, "ada@example.com").await.unwrap();
    let audit = tx.enqueue_message(NewMessage::new("audit", "user 1 registered")).unwrap();
    assert!(notifier.calls().is_empty(), "nothing is sent before commit");
    tx.commit().await.unwrap();

    assert_eq!(notifier.calls(), vec![vec![event, audit]], "one notify after commit, every id in order");
    assert_eq!(count(store.connection(), &users).await, 1, "the business row is written");
    let claimed = store.claim_ids(&[event, audit], &Lease::new(TTL)).await.unwrap();
    assert_eq!(claimed.len(), 2, "both messages are written");
    assert_eq!(claimed[0].id, event);
    assert_eq!((claimed[0].topic.as_str(), claimed[0].key.as_deref()), ("users.registered", Some("1")));
    assert_eq!(claimed[0].payload, br#"{"user_id":1,"email":"ada@example.com"}"#);
    assert_eq!(claimed[1].payload, b"user 1 registered");
}

async fn dropped_transaction_writes_nothing_and_notifies_no_one(store: SqlStore) {
    let notifier = Arc::new(RecordingNotifier::default());
    let store = store.with_notifier(notifier.clone());
    let users = users_table(&store).await;

    let (tx, _) = registration(&store, &users, 1, "ada@example.com").await.unwrap();
    drop(tx);
    let (tx, _) = registration(&store, &users, 2, "grace@example.com").await.unwrap();
    tx.rollback().await.unwrap();

    assert_eq!(count(store.connection(), &users).await, 0, "no business row");
    assert_eq!(store.stats().await.unwrap().pending, 0, "no message");
    assert!(notifier.calls().is_empty(), "no notify");
    // Neither left a lock behind (SQLite's write lock included): the next transaction commits.
    let (tx, _) = registration(&store, &users, 1, "ada@example.com").await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(count(store.connection(), &users).await, 1);
    assert_eq!(notifier.calls().len(), 1);
}

async fn duplicate_in_your_unique_column_is_a_unique_violation(store: SqlStore) {
    let notifier = Arc::new(RecordingNotifier::default());
    let store = store.with_notifier(notifier.clone());
    let users = users_table(&store).await;
    insert_user(store.connection(), &users, 1, "ada@example.com").await.unwrap();

    let err = registration(&store, &users, 2, "ada@example.com").await.unwrap_err();

    assert!(err.is_unique_violation(), "{err:?}");
    assert!(!err.is_retryable(), "{err:?}");
    assert!(matches!(err, WriteError::Database(_)), "your table's error, not the outbox's: {err:?}");
    let source = std::error::Error::source(&err).expect("a source");
    assert!(source.downcast_ref::<DbErr>().is_some(), "the DbErr is the source: {source:?}");
    assert!(!err.to_string().contains("outbox migration"), "{err}");
    assert!(err.to_string().contains("email"), "names your column or its key: {err}");
    // Where the outbox's own error type is wanted, it still is no outbox-schema error.
    let outbox_err = Error::from(err);
    assert!(!matches!(outbox_err, Error::MissingSchema { .. }) && !outbox_err.is_temporary(), "{outbox_err:?}");

    assert_eq!(store.stats().await.unwrap().pending, 0, "the failed registration enqueued nothing");
    assert!(notifier.calls().is_empty());
    // The outbox's own unique violation (a message id stored twice) is no violation of yours.
    let dup = NewMessage::new("write.dup", "x");
    store.enqueue(vec![dup.clone()]).await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.enqueue_message(dup).unwrap();
    let err = tx.commit().await.unwrap_err();
    assert!(matches!(err, WriteError::Outbox(_)) && !err.is_unique_violation(), "{err:?}");
}

async fn transaction_helper_keeps_your_db_errors(store: SqlStore) {
    let users = users_table(&store).await;
    let register = |id: i64| {
        let users = users.clone();
        store.transaction(move |txn| {
            Box::pin(async move {
                insert_user(txn, &users, id, "ada@example.com").await?;
                let event = NewMessage::from_event(&UserRegistered { user_id: id, email: "ada@example.com".into() })?;
                Ok::<_, WriteError>((id, vec![event]))
            })
        })
    };
    assert_eq!(register(1).await.unwrap(), 1);
    let err = register(2).await.unwrap_err();
    assert!(err.is_unique_violation(), "{err:?}");
    assert_eq!(count(store.connection(), &users).await, 1);
    assert_eq!(store.stats().await.unwrap().pending, 1);
}

async fn entity_reads_the_configured_table(store: SqlStore) {
    assert_ne!(store.config().table, outbox_sea_orm::DEFAULT_TABLE, "the fixture's table has a name of its own");
    let mut tx = store.begin().await.unwrap();
    let first = tx.enqueue_message(NewMessage::new("entity.read", "a").key("k").header("h", "v")).unwrap();
    let second = tx.enqueue_message(NewMessage::new("entity.read", "b")).unwrap();
    tx.enqueue_message(NewMessage::new("entity.other", "c")).unwrap();
    tx.commit().await.unwrap();

    let outbox = entity::Entity::of(store.config());
    let rows = outbox
        .select()
        .filter(entity::Column::Topic.eq("entity.read"))
        .order_by_asc(entity::Column::Seq)
        .all(store.connection())
        .await
        .unwrap();
    let ids: Vec<_> = rows.iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![first.as_uuid(), second.as_uuid()]);
    assert_eq!((rows[0].payload.as_slice(), rows[0].msg_key.as_deref()), (&b"a"[..], Some("k")));
    assert_eq!(rows[0].headers, r#"{"h":"v"}"#);
    assert!(rows.iter().all(|r| r.status == status::PENDING && r.attempts == 0));
    let by_id = outbox.select().filter(entity::Column::Id.eq(second.as_uuid())).one(store.connection()).await.unwrap();
    assert_eq!(by_id.map(|r| r.payload), Some(b"b".to_vec()));
}

/// Two serializable transactions that each read the table and then insert: Postgres fails
/// one of them, and the failure is retryable, not an outbox error.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_serialization_failure_is_retryable() {
    let Some(store) = common::store(common::Backend::Postgres, Default::default()).await else { return };
    let notifier = Arc::new(RecordingNotifier::default());
    let store = store.with_notifier(notifier.clone());
    let users = users_table(&store).await;
    let serializable = "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE";

    let mut first = store.begin().await.unwrap();
    let mut second = store.begin().await.unwrap();
    for (tx, id) in [(&mut first, 1), (&mut second, 2)] {
        tx.execute_unprepared(serializable).await.unwrap();
        assert_eq!(count(&**tx, &users).await, 0);
        insert_user(&**tx, &users, id, &format!("u{id}@example.com")).await.unwrap();
        tx.enqueue_message(NewMessage::new("users.registered", id.to_string())).unwrap();
    }
    first.commit().await.unwrap();
    let err = second.commit().await.unwrap_err();

    assert!(err.is_retryable(), "{err:?}");
    assert!(matches!(&err, WriteError::Database(e) if e.to_string().contains("could not serialize")), "{err:?}");
    assert!(!err.is_unique_violation());
    assert_eq!(notifier.calls().len(), 1, "only the committed one notified");
    assert_eq!(store.stats().await.unwrap().pending, 1);
}
