//! Row locks on Postgres and MySQL/MariaDB: a claim skips rows another transaction holds,
//! never waits for them, and the head-of-key check still sees them.
#![cfg(any(feature = "postgres", feature = "mysql"))]

mod common;

use std::time::Duration;

use common::Backend;
use outbox_core::{Lease, NewMessage, OutboxStore};
use outbox_sea_orm::SqlStore;
use sea_orm::{ConnectionTrait, Statement, TransactionTrait};

const TTL: Duration = Duration::from_secs(30);

async fn locked_rows_are_skipped_without_breaking_key_order(store: SqlStore) {
    let a1 = NewMessage::new("lock.order", "a1").key("a");
    let a2 = NewMessage::new("lock.order", "a2").key("a");
    let b1 = NewMessage::new("lock.order", "b1").key("b");
    let ids = store.enqueue(vec![a1.clone(), a2, b1.clone()]).await.unwrap();

    // Another claimer is half-way through claiming a1: it holds the row lock.
    let other = store.connection().begin().await.unwrap();
    let quote = |s: &str| if store.backend() == "mysql" { format!("`{s}`") } else { format!("\"{s}\"") };
    let lock =
        format!("SELECT seq FROM {} WHERE msg_key = 'a' ORDER BY seq LIMIT 1 FOR UPDATE", quote(&store.config().table));
    other.query_all_raw(Statement::from_string(other.get_database_backend(), lock)).await.unwrap();

    // Bounded well below the server's lock wait timeout: a claim that waited would fail here.
    let lease = Lease::new(TTL);
    let claim = store.claim_due(10, Duration::ZERO, &lease);
    let claimed = tokio::time::timeout(Duration::from_secs(10), claim).await.expect("the claim did not wait").unwrap();
    let got: Vec<_> = claimed.iter().map(|m| m.id).collect();
    assert_eq!(got, vec![b1.id], "a1 is skipped (locked) and a2 still waits behind it");

    other.rollback().await.unwrap();
    let claimed = store.claim_ids(&ids, &Lease::new(TTL)).await.unwrap();
    assert_eq!(claimed.iter().map(|m| m.id).collect::<Vec<_>>(), vec![a1.id]);
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_locked_rows_are_skipped_without_breaking_key_order() {
    if let Some(store) = common::store(Backend::Postgres, Default::default()).await {
        locked_rows_are_skipped_without_breaking_key_order(store).await;
    }
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_locked_rows_are_skipped_without_breaking_key_order() {
    if let Some(store) = common::store(Backend::MySql, Default::default()).await {
        locked_rows_are_skipped_without_breaking_key_order(store).await;
    }
}
