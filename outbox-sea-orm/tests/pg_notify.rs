//! `PgNotifier` and the in-transaction `pg_notify` against a real Postgres.
#![cfg(feature = "postgres")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Backend, connect, unique_table};
use futures::StreamExt;
use outbox_core::testkit::{eventually, unique_suffix};
use outbox_core::{Error, FallbackConfig, MemoryBus, NewMessage, Notice, Notifier, Relay};
use outbox_sea_orm::{PgNotifier, SqlStore, SqlStoreConfig, migrate};
use sea_orm::sqlx::postgres::PgListener;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait};

const DEADLINE: Duration = Duration::from_secs(10);

/// A migrated store that notifies `channel`, on its own pool.
async fn notifying_store(channel: &str, table: &str) -> Option<SqlStore> {
    let db = connect(Backend::Postgres).await?;
    let config = SqlStoreConfig::default().table(table).notify_channel(channel);
    migrate(&db, &config).await.unwrap();
    Some(SqlStore::new(db, config).unwrap())
}

/// Waits until a backend is listening on `channel`.
async fn wait_for_listener(db: &DatabaseConnection, channel: &str) -> i32 {
    let sql = format!("SELECT pid FROM pg_stat_activity WHERE query = 'LISTEN \"{channel}\"'");
    eventually("the listener to LISTEN", DEADLINE, || {
        let stmt = Statement::from_string(DbBackend::Postgres, sql.clone());
        async move { db.query_one_raw(stmt).await.unwrap().map(|row| row.try_get::<i32>("", "pid").unwrap()) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_is_woken_by_a_commit_on_another_connection() {
    let channel = format!("outbox_test_{}", unique_suffix());
    let table = unique_table();
    let Some(writer) = notifying_store(&channel, &table).await else { return };
    // The relay has its own pool: the commit reaches it only through NOTIFY.
    let relay_db = connect(Backend::Postgres).await.unwrap();
    let relay_store = Arc::new(SqlStore::new(relay_db.clone(), SqlStoreConfig::default().table(table)).unwrap());
    let bus = Arc::new(MemoryBus::new());
    // The fallback would need a minute: only the listener can deliver within the deadline.
    let fallback = FallbackConfig::default().interval(Duration::from_secs(60)).min_age(Duration::from_secs(60));
    let relay = Relay::builder(relay_store, bus.clone())
        .notifier(Arc::new(PgNotifier::new(&relay_db, channel.clone()).unwrap()))
        .fallback(fallback)
        .build()
        .unwrap()
        .spawn();
    wait_for_listener(&relay_db, &channel).await;

    let event = NewMessage::new("notify.wake", "hello");
    let id = event.id;
    writer.transaction(move |_txn| Box::pin(async move { Ok::<_, Error>(((), vec![event])) })).await.unwrap();

    bus.wait_for(1, DEADLINE).await.expect("the listener published the message");
    assert_eq!(bus.messages()[0].id, id);
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_are_sent_on_commit_only() {
    let channel = format!("outbox_test_{}", unique_suffix());
    let Some(store) = notifying_store(&channel, &unique_table()).await else { return };
    let mut listener = PgListener::connect_with(store.connection().get_postgres_connection_pool()).await.unwrap();
    listener.listen(&channel).await.unwrap();

    let txn = store.connection().begin().await.unwrap();
    store.enqueue_in(&txn, vec![NewMessage::new("notify.rollback", "x")]).await.unwrap();
    txn.rollback().await.unwrap();
    // Notifications arrive in commit order: the sentinel comes first only if the
    // rolled-back transaction sent nothing.
    let sentinel = Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_notify($1, 'sentinel')",
        [channel.clone().into()],
    );
    store.connection().execute_raw(sentinel).await.unwrap();
    let first = tokio::time::timeout(DEADLINE, listener.recv()).await.unwrap().unwrap();
    assert_eq!(first.payload(), "sentinel");

    // Two enqueues in one transaction: one notification, on commit.
    let txn = store.connection().begin().await.unwrap();
    store.enqueue_in(&txn, vec![NewMessage::new("notify.commit", "1")]).await.unwrap();
    store.enqueue_in(&txn, vec![NewMessage::new("notify.commit", "2")]).await.unwrap();
    txn.commit().await.unwrap();
    store
        .connection()
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_notify($1, 'after')",
            [channel.clone().into()],
        ))
        .await
        .unwrap();
    let got = tokio::time::timeout(DEADLINE, listener.recv()).await.unwrap().unwrap();
    assert_eq!(got.payload(), "", "the commit's notification");
    let next = tokio::time::timeout(DEADLINE, listener.recv()).await.unwrap().unwrap();
    assert_eq!(next.payload(), "after", "folded into one notification per transaction");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_listener_connection_is_surfaced() {
    let Some(db) = connect(Backend::Postgres).await else { return };
    let channel = format!("outbox_test_{}", unique_suffix());
    let notifier = PgNotifier::new(&db, channel.clone()).unwrap();
    let mut notices = notifier.subscribe().await.unwrap();
    let pid = wait_for_listener(&db, &channel).await;

    let kill = Statement::from_sql_and_values(DbBackend::Postgres, "SELECT pg_terminate_backend($1)", [pid.into()]);
    db.execute_raw(kill).await.unwrap();

    // Never silent: a wake-up (reconnected, sweep now), an error, or the end of the stream.
    let next = tokio::time::timeout(DEADLINE, notices.next()).await.expect("the disconnect is reported");
    assert!(matches!(next, Some(Ok(Notice::Wake)) | Some(Err(_)) | None), "{next:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_on_notify_wakes_listeners() {
    let Some(db) = connect(Backend::Postgres).await else { return };
    let channel = format!("outbox_test_{}", unique_suffix());
    let listening = PgNotifier::new(&db, channel.clone()).unwrap();
    let mut notices = listening.subscribe().await.unwrap();
    wait_for_listener(&db, &channel).await;

    let sending = PgNotifier::new(&db, channel.clone()).unwrap().send_on_notify(true);
    sending.notify(&[outbox_core::MessageId::new()]).await;
    let next = tokio::time::timeout(DEADLINE, notices.next()).await.expect("a notice");
    assert!(matches!(next, Some(Ok(Notice::Wake))), "{next:?}");
}
