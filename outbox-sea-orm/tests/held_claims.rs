//! `ClaimMode::Transaction` on Postgres: claims held by row locks in open transactions.
#![cfg(feature = "postgres")]

mod common;

use std::time::Duration;

use common::Backend;
use outbox_core::testkit::eventually;
use outbox_core::{Disposition, Failure, Lease, NewMessage, OutboxStore};
use outbox_sea_orm::{ClaimMode, SqlStore, SqlStoreConfig};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, Statement};

const TTL: Duration = Duration::from_secs(30);

/// Claims by id of fewer messages than this take a lease instead.
const HELD: usize = 32;

fn messages(topic: &str, n: usize) -> Vec<NewMessage> {
    (0..n).map(|i| NewMessage::new(topic, i.to_string())).collect()
}

async fn held_store() -> Option<SqlStore> {
    common::store(Backend::Postgres, SqlStoreConfig::default().claim_mode(ClaimMode::Transaction)).await
}

/// A second store on the same table, on its own pool (another relay process, as far as the
/// database can tell).
async fn peer(of: &SqlStore, application_name: &str, max_connections: u32) -> SqlStore {
    let db = pool(application_name, max_connections, "").await;
    SqlStore::new(db, of.config().clone()).expect("store")
}

/// A pool of its own, its sessions named `application_name`; `params` are more URL parameters.
async fn pool(application_name: &str, max_connections: u32, params: &str) -> DatabaseConnection {
    let (_, url) = common::url_of(Backend::Postgres);
    let sep = if url.contains('?') { '&' } else { '?' };
    let mut options = ConnectOptions::new(format!("{url}{sep}application_name={application_name}{params}"));
    options.max_connections(max_connections).sqlx_logging(false);
    Database::connect(options).await.expect("connect")
}

async fn scalar(store: &SqlStore, sql: String) -> i64 {
    let db = store.connection();
    let row = db.query_one_raw(Statement::from_string(db.get_database_backend(), sql)).await.unwrap().unwrap();
    row.try_get_by_index::<i64>(0).unwrap()
}

fn table(store: &SqlStore) -> String {
    format!("\"{}\"", store.config().table)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_claim_writes_nothing_and_excludes_other_relays() {
    let Some(store) = held_store().await else { return };
    assert_eq!(store.claim_mode(), ClaimMode::Transaction);
    let ids = store.enqueue(messages("held.a", HELD)).await.unwrap();
    let lease = Lease::new(TTL);
    assert_eq!(store.claim_ids(&ids, &lease).await.unwrap().len(), HELD);

    let t = table(&store);
    let leased = scalar(&store, format!("SELECT COUNT(*) FROM {t} WHERE claimed_until IS NOT NULL")).await;
    assert_eq!(leased, 0, "the claim wrote no lease on the rows");
    assert_eq!(store.stats().await.unwrap().claimed, HELD as u64, "this store counts the rows it holds");
    let other = peer(&store, "held_peer_a", 2).await;
    assert!(other.claim_due(10, Duration::ZERO, &Lease::new(TTL)).await.unwrap().is_empty(), "rows are locked");
    assert!(other.claim_ids(&ids, &Lease::new(TTL)).await.unwrap().is_empty());

    assert_eq!(store.complete(&ids, &lease).await.unwrap(), HELD as u64);
    assert_eq!(scalar(&store, format!("SELECT COUNT(*) FROM {t}")).await, 0, "complete committed");
    assert_eq!(store.stats().await.unwrap().claimed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_claims_by_id_take_a_lease() {
    let Some(store) = held_store().await else { return };
    let ids = store.enqueue(messages("held.small", 3)).await.unwrap();
    let lease = Lease::new(TTL);
    assert_eq!(store.claim_ids(&ids, &lease).await.unwrap().len(), 3);
    let t = table(&store);
    assert_eq!(scalar(&store, format!("SELECT COUNT(*) FROM {t} WHERE claimed_until IS NOT NULL")).await, 3);
    assert_eq!(store.complete(&ids, &lease).await.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_claim_commits_asynchronously_without_changing_the_session() {
    let Some(store) = held_store().await else { return };
    // One connection, the claim's and the check's (too few for held claims).
    let one =
        SqlStore::new(pool("lease_sync", 1, "").await, store.config().clone().claim_mode(ClaimMode::Lease)).unwrap();
    let ids = one.enqueue(messages("held.sync", 3)).await.unwrap();
    let lease = Lease::new(TTL);
    assert_eq!(one.claim_ids(&ids, &lease).await.unwrap().len(), 3);
    let db = one.connection();
    let show = Statement::from_string(db.get_database_backend(), "SHOW synchronous_commit");
    let setting: String = db.query_one_raw(show).await.unwrap().unwrap().try_get_by_index(0).unwrap();
    assert_eq!(setting, "on", "the claim's asynchronous commit stayed within its own statement");
    assert_eq!(one.complete(&ids, &lease).await.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeps_take_leases_while_idle_and_hold_claims_once_busy() {
    let Some(store) = held_store().await else { return };
    let t = table(&store);
    let leased = || scalar(&store, format!("SELECT COUNT(*) FROM {t} WHERE claimed_until IS NOT NULL"));
    assert!(store.claim_due(10, Duration::ZERO, &Lease::new(TTL)).await.unwrap().is_empty());
    let ids = store.enqueue((0..6).map(|i| NewMessage::new("held.sweep", i.to_string())).collect()).await.unwrap();

    // After an empty sweep, one statement: a lease.
    let first = Lease::new(TTL);
    assert_eq!(store.claim_due(2, Duration::ZERO, &first).await.unwrap().len(), 2);
    assert_eq!(leased().await, 2);
    // It found work: the next sweeps hold their claims.
    let second = Lease::new(TTL);
    assert_eq!(store.claim_due(2, Duration::ZERO, &second).await.unwrap().len(), 2);
    assert_eq!(leased().await, 2, "the held claim wrote nothing");
    assert_eq!(store.stats().await.unwrap().claimed, 4);
    assert_eq!(store.complete(&ids[..2], &first).await.unwrap(), 2);
    assert_eq!(store.complete(&ids[2..4], &second).await.unwrap(), 2);
    assert_eq!(scalar(&store, format!("SELECT COUNT(*) FROM {t}")).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_claim_in_the_same_transaction_skips_what_it_holds() {
    let Some(store) = held_store().await else { return };
    let ids = store.enqueue(messages("held.again", HELD + 1)).await.unwrap();
    let lease = Lease::new(TTL);
    assert_eq!(store.claim_ids(&ids[..HELD], &lease).await.unwrap().len(), HELD);
    // Row locks do not stop their own transaction, so the claim has to leave them out itself.
    let again = store.claim_ids(&ids, &lease).await.unwrap();
    assert_eq!(again.iter().map(|m| m.id).collect::<Vec<_>>(), vec![ids[HELD]]);
    assert_eq!(store.complete(&ids, &lease).await.unwrap(), HELD as u64 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_relay_frees_its_rows_at_once() {
    let Some(store) = held_store().await else { return };
    let ids = store.enqueue(messages("held.crash", HELD)).await.unwrap();
    let crashed = peer(&store, "held_crashing_relay", 2).await;
    assert_eq!(crashed.claim_ids(&ids, &Lease::new(TTL)).await.unwrap().len(), HELD);
    assert!(store.claim_ids(&ids, &Lease::new(TTL)).await.unwrap().is_empty(), "held by the other relay");

    // The relay's connection dies (process killed): Postgres rolls its transaction back.
    let killed = scalar(
        &store,
        "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'held_crashing_relay'"
            .into(),
    )
    .await;
    assert!(killed >= 1);
    let lease = Lease::new(TTL);
    let taken = eventually("the dead relay's rows to be claimable", Duration::from_secs(10), || {
        let (store, ids, lease) = (store.clone(), ids.clone(), lease);
        async move { Some(store.claim_ids(&ids, &lease).await.unwrap()).filter(|v| !v.is_empty()) }
    })
    .await;
    assert_eq!(taken.len(), HELD, "taken over long before the 30 s claim TTL");
    assert_eq!(store.complete(&ids, &lease).await.unwrap(), HELD as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_settle_commits_and_keeps_the_rest_claimed() {
    let Some(store) = held_store().await else { return };
    let ids = store.enqueue(messages("held.partial", HELD)).await.unwrap();
    let lease = Lease::new(TTL);
    assert_eq!(store.claim_ids(&ids, &lease).await.unwrap().len(), HELD);

    assert_eq!(store.complete(&ids[..1], &lease).await.unwrap(), 1);
    let t = table(&store);
    let rest = HELD as i64 - 1;
    assert_eq!(scalar(&store, format!("SELECT COUNT(*) FROM {t}")).await, rest, "the complete is durable at once");
    let other = peer(&store, "held_peer_partial", 2).await;
    assert!(other.claim_due(10, Duration::ZERO, &Lease::new(TTL)).await.unwrap().is_empty(), "the rest stays claimed");
    assert!(store.complete(&ids[1..], &Lease::new(TTL)).await.unwrap() == 0, "a stranger cannot settle them");

    let failures: Vec<Failure> = ids[1..]
        .iter()
        .map(|id| Failure { id: *id, error: "broker said no".into(), disposition: Disposition::DeadLetter })
        .collect();
    store.fail(&failures, &lease).await.unwrap();
    let dead = scalar(&store, format!("SELECT COUNT(*) FROM {t} WHERE status = 2 AND attempts = 1")).await;
    assert_eq!(dead, rest, "the failures were recorded under the lease the rest was given");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_beyond_half_the_pool_take_a_lease() {
    let Some(store) = held_store().await else { return };
    let small = peer(&store, "held_small_pool", 2).await; // one held claim at most
    let ids = store.enqueue(messages("held.cap", 2 * HELD)).await.unwrap();
    let (first, second) = (Lease::new(TTL), Lease::new(TTL));
    assert_eq!(small.claim_ids(&ids[..HELD], &first).await.unwrap().len(), HELD);
    // The pool's other connection stays free for writers: this claim leases instead of waiting.
    let claim = small.claim_ids(&ids[HELD..], &second);
    let got = tokio::time::timeout(Duration::from_secs(10), claim).await.expect("the claim did not wait").unwrap();
    assert_eq!(got.len(), HELD);
    let t = table(&store);
    let leased = scalar(&store, format!("SELECT COUNT(*) FROM {t} WHERE claimed_until IS NOT NULL")).await;
    assert_eq!(leased, HELD as i64);
    assert_eq!(small.stats().await.unwrap().claimed, 2 * HELD as u64);
    assert_eq!(small.complete(&ids[HELD..], &second).await.unwrap(), HELD as u64);
    assert_eq!(small.complete(&ids[..HELD], &first).await.unwrap(), HELD as u64);
    assert_eq!(scalar(&store, format!("SELECT COUNT(*) FROM {t}")).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_one_connection_is_refused_for_held_claims() {
    let Some(store) = held_store().await else { return };
    let config = store.config().clone();
    let err = SqlStore::new(pool("held_pool_of_one", 1, "").await, config.clone()).unwrap_err().to_string();
    assert!(err.contains("`store.claim_mode`") && err.contains("max_connections = 1"), "{err}");
    // `auto` leases instead: a held claim would leave writers no connection while it publishes.
    let auto = SqlStore::new(pool("held_pool_of_one", 1, "").await, config.claim_mode(ClaimMode::Auto)).unwrap();
    assert_eq!(auto.claim_mode(), ClaimMode::Lease);
    let ids = auto.enqueue(messages("held.one", HELD)).await.unwrap();
    let lease = Lease::new(TTL);
    assert_eq!(auto.claim_ids(&ids, &lease).await.unwrap().len(), HELD);
    let t = table(&store);
    assert_eq!(scalar(&store, format!("SELECT COUNT(*) FROM {t} WHERE claimed_until IS NOT NULL")).await, HELD as i64);
    assert_eq!(auto.complete(&ids, &lease).await.unwrap(), HELD as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_on_one_pool_share_half_of_it_for_held_claims() {
    let Some(store) = held_store().await else { return };
    // Two stores (two tables) on one pool of two: one held claim between them, at most.
    let db = pool("held_shared_pool", 2, "").await;
    let first = SqlStore::new(db.clone(), store.config().clone()).unwrap();
    let other_config = store.config().clone().table(common::unique_table());
    outbox_sea_orm::migrate(&db, &other_config).await.unwrap();
    let second = SqlStore::new(db, other_config).unwrap();
    let (a, b) = (
        first.enqueue(messages("held.share", HELD)).await.unwrap(),
        second.enqueue(messages("held.share", HELD)).await.unwrap(),
    );
    let (la, lb) = (Lease::new(TTL), Lease::new(TTL));
    assert_eq!(first.claim_ids(&a, &la).await.unwrap().len(), HELD);
    let claim = second.claim_ids(&b, &lb);
    let got = tokio::time::timeout(Duration::from_secs(10), claim).await.expect("the claim did not wait").unwrap();
    assert_eq!(got.len(), HELD);
    let leased = format!("SELECT COUNT(*) FROM {} WHERE claimed_until IS NOT NULL", table(&second));
    assert_eq!(scalar(&store, leased).await, HELD as i64, "the second store leased: the pool's half was taken");
    // The pool's other connection is still free for writers.
    let write = second.enqueue(messages("held.share.more", 1));
    tokio::time::timeout(Duration::from_secs(10), write).await.expect("a writer got a connection").unwrap();
    assert_eq!(second.complete(&b, &lb).await.unwrap(), HELD as u64);
    assert_eq!(first.complete(&a, &la).await.unwrap(), HELD as u64);
    second.connection().execute_unprepared(&format!("DROP TABLE {}", table(&second))).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_begins_anew_on_a_kept_transaction_that_fills_the_share() {
    let Some(store) = held_store().await else { return };
    let small = peer(&store, "held_spare_reused", 2).await; // one held claim at most
    let ids = small.enqueue(messages("held.reuse", 2 * HELD)).await.unwrap();
    let lease = Lease::new(TTL);
    assert_eq!(small.claim_ids(&ids[..HELD], &lease).await.unwrap().len(), HELD);
    assert_eq!(small.complete(&ids[..HELD], &lease).await.unwrap(), HELD as u64);
    // The next claim's transaction is kept with the first TTL as its idle timeout, and takes
    // the pool's one place for held claims. A claim of another TTL begins anew on it.
    let other = Lease::new(TTL / 2);
    assert_eq!(small.claim_ids(&ids[HELD..], &other).await.unwrap().len(), HELD);
    let t = table(&store);
    assert_eq!(scalar(&store, format!("SELECT COUNT(*) FROM {t} WHERE claimed_until IS NOT NULL")).await, 0, "held");
    assert_eq!(small.complete(&ids[HELD..], &other).await.unwrap(), HELD as u64);
}

/// Each held claim sets its own `idle_in_transaction_session_timeout` (the claim TTL), so a
/// shorter one set for the server, database, role or session cannot end it: no check is
/// needed for it at start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_server_idle_timeout_does_not_end_held_claims() {
    let Some(store) = held_store().await else { return };
    let params = "&options=-c%20idle_in_transaction_session_timeout%3D100";
    let db = pool("held_short_idle", 4, params).await;
    let short = SqlStore::new(db.clone(), store.config().clone()).unwrap();
    let ids = short.enqueue(messages("held.idle", HELD)).await.unwrap();
    let lease = Lease::new(TTL);
    assert_eq!(short.claim_ids(&ids, &lease).await.unwrap().len(), HELD);

    // A plain transaction on the same pool, begun after the claim, is ended by the setting.
    let mut plain = db.get_postgres_connection_pool().begin().await.unwrap();
    let pid: i32 = sea_orm::sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *plain).await.unwrap();
    eventually("the server to end an idle transaction after 100 ms", Duration::from_secs(10), || {
        let (store, sql) = (store.clone(), format!("SELECT COUNT(*) FROM pg_stat_activity WHERE pid = {pid}"));
        async move { (scalar(&store, sql).await == 0).then_some(()) }
    })
    .await;
    drop(plain);
    assert_eq!(short.complete(&ids, &lease).await.unwrap(), HELD as u64, "the held claim outlived it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_kept_for_the_next_claim_holds_nothing_and_goes_back_to_the_pool_unused() {
    let Some(store) = held_store().await else { return };
    let small = peer(&store, "held_spare", 2).await;
    let pool = small.connection().get_postgres_connection_pool().clone();
    let ids = small.enqueue(messages("held.spare", HELD)).await.unwrap();
    let lease = Lease::new(TTL);
    assert_eq!(small.claim_ids(&ids, &lease).await.unwrap().len(), HELD);
    assert_eq!(small.complete(&ids, &lease).await.unwrap(), HELD as u64);

    // The commit began the next claim's transaction (kept for about a second): it must hold no
    // snapshot and no transaction id, or it would hold back vacuum.
    let of_relay = "FROM pg_stat_activity WHERE application_name = 'held_spare'";
    let kept = scalar(&store, format!("SELECT COUNT(*) {of_relay} AND state = 'idle in transaction'")).await;
    assert_eq!(kept, 1, "the next claim's transaction is open on the kept connection");
    let holding =
        scalar(&store, format!("SELECT COUNT(*) {of_relay} AND (backend_xmin IS NOT NULL OR backend_xid IS NOT NULL)"))
            .await;
    assert_eq!(holding, 0, "a kept transaction holds no snapshot or transaction id");

    eventually("the unused connection to go back to the pool", Duration::from_secs(10), || {
        let pool = pool.clone();
        async move { (pool.num_idle() == pool.size() as usize).then_some(()) }
    })
    .await;
    let open = scalar(&store, format!("SELECT COUNT(*) {of_relay} AND state <> 'idle'")).await;
    assert_eq!(open, 0, "the kept transaction was rolled back before its connection went back");

    // The settle ran as a statement prepared on that connection; it must not go back with it.
    let mut conns = Vec::new();
    for _ in 0..pool.size() {
        conns.push(pool.acquire().await.unwrap());
    }
    for conn in &mut conns {
        let ours: i64 = sea_orm::sqlx::query_scalar("SELECT COUNT(*) FROM pg_prepared_statements WHERE from_sql")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        assert_eq!(ours, 0, "the relay's prepared settle was deallocated before its connection went back");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_connection_the_server_dropped_is_replaced() {
    let Some(store) = held_store().await else { return };
    let small = peer(&store, "held_spare_killed", 2).await;
    let ids = small.enqueue(messages("held.spare.killed", 2 * HELD)).await.unwrap();
    let lease = Lease::new(TTL);
    assert_eq!(small.claim_ids(&ids[..HELD], &lease).await.unwrap().len(), HELD);
    assert_eq!(small.complete(&ids[..HELD], &lease).await.unwrap(), HELD as u64);

    // A database restart ends every connection, the kept one too.
    let of_relay = "FROM pg_stat_activity WHERE application_name = 'held_spare_killed'";
    assert!(scalar(&store, format!("SELECT COUNT(pg_terminate_backend(pid)) {of_relay}")).await >= 1);
    eventually("the relay's connections to end", Duration::from_secs(10), || {
        let (store, sql) = (store.clone(), format!("SELECT COUNT(*) {of_relay}"));
        async move { (scalar(&store, sql).await == 0).then_some(()) }
    })
    .await;

    let lease = Lease::new(TTL);
    let claimed = small.claim_ids(&ids[HELD..], &lease).await.expect("a fresh connection replaces the dead one");
    assert_eq!(claimed.len(), HELD);
    assert_eq!(small.complete(&ids[HELD..], &lease).await.unwrap(), HELD as u64);
    assert_eq!(scalar(&store, format!("SELECT COUNT(*) FROM {}", table(&store))).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_of_another_type_is_a_clear_error() {
    let Some(store) = held_store().await else { return };
    // Column types are checked once per claim, not per value: this must still be caught.
    let t = table(&store);
    let db = store.connection();
    db.execute_unprepared(&format!("ALTER TABLE {t} ALTER COLUMN attempts TYPE bigint")).await.unwrap();
    let ids = store.enqueue(messages("held.types", HELD)).await.unwrap();
    let err = store.claim_ids(&ids, &Lease::new(TTL)).await.unwrap_err().to_string();
    assert!(err.contains("`attempts`") && err.contains("INT8"), "{err}");
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn transaction_claims_are_postgres_only() {
    let dir = std::env::temp_dir().join(format!("held-{}", outbox_core::testkit::unique_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = outbox_sea_orm::connect_sqlite(dir.join("x.db")).await.unwrap();
    let err = SqlStore::new(db, SqlStoreConfig::default().claim_mode(ClaimMode::Transaction)).unwrap_err();
    assert!(err.to_string().contains("`store.claim_mode`") && err.to_string().contains("Postgres-only"), "{err}");
}
