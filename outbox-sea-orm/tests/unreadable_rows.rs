//! A row the relay cannot read (written by hand, by another producer) is dead-lettered on its
//! own; the rest of its claim is published.
#![cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]

mod common;

use std::time::Duration;

use outbox_core::message::now_millis;
use outbox_core::{DeadLetterQuery, Lease, MessageId, NewMessage, OutboxAdmin, OutboxStore, ReplaySelector};
use outbox_sea_orm::SqlStore;
use sea_orm::{ConnectionTrait, Statement, Value};

const TTL: Duration = Duration::from_secs(30);
/// Enough for a claim by id to be held in a transaction on Postgres.
const GOOD: usize = 40;
const NOT_STRINGS: &str = r#"{"attempt": 3}"#;

/// Inserts a message row by hand, as another producer might; `created_at` as given.
async fn insert_by_hand(store: &SqlStore, headers: &str, created_at: Value) -> MessageId {
    let id = MessageId::new();
    let table = &store.config().table;
    let (sql, backend) = match store.backend() {
        "postgres" => (
            format!(
                "INSERT INTO \"{table}\" (id, topic, payload, headers, created_at, available_at) \
                 VALUES ($1, 'raw.t', $2, $3, $4, $5)"
            ),
            sea_orm::DbBackend::Postgres,
        ),
        name => (
            format!(
                "INSERT INTO {q}{table}{q} (id, topic, payload, headers, created_at, available_at) \
                 VALUES (?, 'raw.t', ?, ?, ?, ?)",
                q = if name == "mysql" { '`' } else { '"' }
            ),
            if name == "mysql" { sea_orm::DbBackend::MySql } else { sea_orm::DbBackend::Sqlite },
        ),
    };
    let values: Vec<Value> =
        vec![id.as_uuid().into(), vec![1u8, 2].into(), headers.to_owned().into(), created_at, now_millis().into()];
    store.connection().execute_raw(Statement::from_sql_and_values(backend, sql, values)).await.unwrap();
    id
}

async fn enqueue_good(store: &SqlStore, n: usize) -> Vec<MessageId> {
    store.enqueue((0..n).map(|i| NewMessage::new("raw.t", i.to_string()).header("h", "v")).collect()).await.unwrap()
}

/// Good rows around one with bad headers; returns the good ids and the bad one.
async fn good_around_bad(store: &SqlStore) -> (Vec<MessageId>, MessageId) {
    let mut good = enqueue_good(store, GOOD / 2).await;
    let bad = insert_by_hand(store, NOT_STRINGS, now_millis().into()).await;
    good.extend(enqueue_good(store, GOOD / 2).await);
    (good, bad)
}

/// The bad row is dead with one attempt and an error naming the headers column; replay makes
/// it pending again (and the next claim dead-letters it again, until someone fixes the row).
async fn assert_dead_for_its_headers(store: &SqlStore, bad: MessageId) {
    let query = DeadLetterQuery { ids: vec![bad], ..Default::default() };
    let dead = store.dead_letters(&query).await.unwrap();
    assert_eq!(dead.len(), 1, "dead_letters lists the row it cannot fully read");
    let error = dead[0].message.last_error.clone().unwrap_or_default();
    assert_eq!(dead[0].message.attempts, 1);
    assert!(error.contains("headers") && error.contains("JSON object of strings"), "{error}");
    assert!(dead[0].message.headers.is_empty(), "its headers are shown empty");
    assert_eq!(store.replay(&ReplaySelector::Ids(vec![bad])).await.unwrap(), 1);
    assert_eq!(store.stats().await.unwrap().dead, 0);
}

/// A claim by id of the good rows and the bad one: the good ones come back, the bad one dies.
async fn a_claim_by_id_dead_letters_only_the_unreadable_row(store: SqlStore) {
    let (good, bad) = good_around_bad(&store).await;
    let mut ids = good.clone();
    ids.push(bad);
    let lease = Lease::new(TTL);
    let claimed = store.claim_ids(&ids, &lease).await.expect("one bad row does not fail the claim");
    let mut got: Vec<MessageId> = claimed.iter().map(|m| m.id).collect();
    got.sort();
    let mut want = good.clone();
    want.sort();
    assert_eq!(got, want);
    assert!(claimed.iter().all(|m| m.headers.get("h").map(String::as_str) == Some("v")));
    assert_eq!(store.complete(&good, &lease).await.unwrap(), GOOD as u64);
    assert_eq!(store.stats().await.unwrap().pending, 0);
    assert_dead_for_its_headers(&store, bad).await;
}

/// A fallback relay publishes the good rows; the bad one is dead, and stays out of the way.
async fn a_relay_publishes_around_the_unreadable_row(store: SqlStore) {
    let (good, bad) = good_around_bad(&store).await;
    let (relay, bus) = common::fallback_relay(&store);
    bus.wait_for(GOOD, Duration::from_secs(20)).await.expect("the good rows are published");
    relay.shutdown().await.unwrap();
    let mut published: Vec<MessageId> = bus.messages().iter().map(|m| m.id).collect();
    published.sort();
    let mut want = good;
    want.sort();
    assert_eq!(published, want);
    assert_dead_for_its_headers(&store, bad).await;
}

per_backend!(a_claim_by_id_dead_letters_only_the_unreadable_row, a_relay_publishes_around_the_unreadable_row);

/// Postgres holds claims in transactions by default (above); the same with leases.
#[cfg(feature = "postgres")]
mod postgres_lease {
    use outbox_sea_orm::{ClaimMode, SqlStoreConfig};

    use super::*;
    use crate::common::Backend;

    async fn lease_store() -> Option<SqlStore> {
        common::store(Backend::Postgres, SqlStoreConfig::default().claim_mode(ClaimMode::Lease)).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_claim_by_id_dead_letters_only_the_unreadable_row() {
        let Some(store) = lease_store().await else { return };
        super::a_claim_by_id_dead_letters_only_the_unreadable_row(store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_relay_publishes_around_the_unreadable_row() {
        let Some(store) = lease_store().await else { return };
        super::a_relay_publishes_around_the_unreadable_row(store).await;
    }

    /// A held claim that found only unreadable rows commits their dead-lettering instead of
    /// rolling it back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_claim_of_only_unreadable_rows_commits_them_dead() {
        let config = SqlStoreConfig::default().claim_mode(ClaimMode::Transaction);
        let Some(store) = common::store(Backend::Postgres, config).await else { return };
        let mut bad = Vec::new();
        for _ in 0..GOOD {
            bad.push(insert_by_hand(&store, "[]", now_millis().into()).await);
        }
        assert!(store.claim_ids(&bad, &Lease::new(TTL)).await.unwrap().is_empty());
        let stats = store.stats().await.unwrap();
        assert_eq!((stats.pending, stats.dead, stats.claimed), (0, GOOD as u64, 0));
    }
}

#[cfg(feature = "sqlite")]
mod sqlite_values {
    use outbox_sea_orm::SqlStoreConfig;

    use super::*;
    use crate::common::Backend;

    /// SQLite lets a column hold a value of any type: a row whose `created_at` is text is
    /// this row's problem, not the table's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_value_of_another_type_dead_letters_its_row() {
        let Some(store) = common::store(Backend::Sqlite, SqlStoreConfig::default()).await else { return };
        let good = enqueue_good(&store, 3).await;
        let bad = insert_by_hand(&store, "{}", "yesterday".into()).await;
        // By id: text sorts after every number in SQLite, so no sweep would find it old enough.
        let mut ids = good.clone();
        ids.push(bad);
        let claimed = store.claim_ids(&ids, &Lease::new(TTL)).await.unwrap();
        assert_eq!(claimed.iter().map(|m| m.id).collect::<Vec<_>>(), good);
        let dead = store.dead_letters(&DeadLetterQuery::default()).await.unwrap();
        assert_eq!(dead.iter().map(|d| d.message.id).collect::<Vec<_>>(), vec![bad]);
        let error = dead[0].message.last_error.clone().unwrap_or_default();
        assert!(error.contains("`created_at`"), "{error}");
    }
}
