//! Key partitions: relays share them out, claim keyed messages only from their own, keep
//! per-key order while partitions move (a relay joins, shuts down, dies), and a table from
//! before partitions is upgraded in place.
#![cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use outbox_core::testkit::{Killable, eventually};
use outbox_core::{
    Disposition, Failure, FallbackConfig, Lease, MemoryBus, MessageId, NewMessage, OutboxMessage, OutboxStore,
    PublishOutcome, Relay, RelayHandle,
};
use outbox_sea_orm::schema::partition_of;
use outbox_sea_orm::{SqlStore, migrate};
use sea_orm::{ConnectionTrait, Statement, TransactionTrait};
use uuid::Uuid;

use common::{Backend, make_pre_partition_table};

const TTL: Duration = Duration::from_secs(1);

/// Another relay's store on the same table, with a short partition lease.
fn peer(store: &SqlStore) -> SqlStore {
    SqlStore::new(store.connection().clone(), store.config().clone().partition_lease_ttl(TTL)).unwrap()
}

async fn query(store: &SqlStore, sql: String) -> Vec<sea_orm::QueryResult> {
    let db = store.connection();
    db.query_all_raw(Statement::from_string(db.get_database_backend(), sql)).await.unwrap()
}

fn quoted(store: &SqlStore, name: &str) -> String {
    Backend::of(store.connection()).quote(name)
}

/// Partition → live owner.
async fn owners(store: &SqlStore) -> HashMap<i32, Uuid> {
    let t = quoted(store, &format!("{}_partitions", store.config().table));
    let now = outbox_core::message::now_millis();
    let rows = query(store, format!("SELECT partition_no, owner FROM {t} WHERE lease_until > {now}")).await;
    rows.iter()
        .filter_map(|r| {
            let p = r.try_get_by_index::<i32>(0).unwrap();
            r.try_get_by_index::<Option<Uuid>>(1).unwrap().map(|o| (p, o))
        })
        .collect()
}

fn held(owners: &HashMap<i32, Uuid>, store: &SqlStore) -> usize {
    let me = store.partition_owner().unwrap();
    owners.values().filter(|o| **o == me).count()
}

fn keyed(i: usize, keys: usize) -> NewMessage {
    NewMessage::new("parts", i.to_string()).key(format!("key-{}", i % keys))
}

/// Two stores split the partitions between them; each claims only keyed messages of its
/// own partitions, and messages without a key go to either.
async fn relays_split_the_partitions_and_claim_only_their_own(store: SqlStore) {
    let (a, b) = (peer(&store), peer(&store));
    let lease = Lease::new(Duration::from_secs(30));
    eventually("two relays to hold 128 partitions each", Duration::from_secs(20), || async {
        // A claim renews the hold (this one finds nothing).
        let _ = a.claim_ids(&[MessageId::new()], &lease).await.unwrap();
        let _ = b.claim_ids(&[MessageId::new()], &lease).await.unwrap();
        let o = owners(&store).await;
        (held(&o, &a) == 128 && held(&o, &b) == 128).then_some(())
    })
    .await;

    let messages: Vec<NewMessage> = (0..400).map(|i| keyed(i, 200)).chain([NewMessage::new("parts", "free")]).collect();
    store.enqueue(messages).await.unwrap();
    let o = owners(&store).await;
    let (la, lb) = (Lease::new(Duration::from_secs(30)), Lease::new(Duration::from_secs(30)));
    let got_a = a.claim_due(1000, Duration::ZERO, &la).await.unwrap();
    let got_b = b.claim_due(1000, Duration::ZERO, &lb).await.unwrap();
    for (got, who) in [(&got_a, &a), (&got_b, &b)] {
        for m in got.iter().filter(|m| m.key.is_some()) {
            let p = partition_of(m.key.as_deref().unwrap(), 256);
            assert_eq!(o.get(&p), who.partition_owner().as_ref(), "{} claimed from a partition it does not hold", m.id);
        }
    }
    // Every key's run (both of its messages, in order), once; the keyless one to either.
    let keys: HashSet<_> = got_a.iter().chain(&got_b).filter_map(|m| m.key.clone()).collect();
    assert_eq!(keys.len(), 200, "each store claimed the runs of its keys");
    assert_eq!(got_a.len() + got_b.len(), 401);
    for got in [&got_a, &got_b] {
        let keyed: Vec<OutboxMessage> = got.iter().filter(|m| m.key.is_some()).cloned().collect();
        assert_eq!(check_key_order(&keyed, 200, keyed.len()), 0);
    }
}

/// One store holding every partition, with a pending keyed backlog.
async fn sole_owner(store: &SqlStore) -> SqlStore {
    let s = peer(store);
    let lease = Lease::new(Duration::from_secs(30));
    eventually("one relay to hold every partition", Duration::from_secs(20), || async {
        let _ = s.claim_ids(&[MessageId::new()], &lease).await.unwrap();
        (held(&owners(store).await, &s) == 256).then_some(())
    })
    .await;
    s
}

/// A sweep claims each key's head with the messages right after it, up to the first one that
/// is not claimable now (here: backing off).
async fn a_sweep_claims_runs_up_to_a_row_that_is_not_ready(store: SqlStore) {
    let s = sole_owner(&store).await;
    let ids = s.enqueue((0..4).map(|i| NewMessage::new("parts", i.to_string()).key("k")).collect()).await.unwrap();
    let lease = Lease::new(Duration::from_secs(30));
    let got = s.claim_due(1000, Duration::ZERO, &lease).await.unwrap();
    assert_eq!(got.iter().map(|m| m.id).collect::<Vec<_>>(), ids, "the whole run, in order");
    // 0 published; 1 fails and backs off; 2 and 3 go back untouched.
    s.complete(&ids[..1], &lease).await.unwrap();
    let backoff = Disposition::RetryAfter(Duration::from_millis(300));
    s.fail(&[Failure { id: ids[1], error: "flaky".into(), disposition: backoff }], &lease).await.unwrap();
    s.release(&ids[2..], &lease).await.unwrap();
    let stats = s.stats().await.unwrap();
    assert_eq!((stats.pending, stats.claimed), (3, 0));
    assert!(s.claim_due(1000, Duration::ZERO, &Lease::new(TTL)).await.unwrap().is_empty(), "1 backs off, 2 waits");
    let lease = Lease::new(Duration::from_secs(30));
    let again = eventually("the retry to become due", Duration::from_secs(20), || async {
        Some(s.claim_due(1000, Duration::ZERO, &lease).await.unwrap()).filter(|got| !got.is_empty())
    })
    .await;
    assert_eq!(again.iter().map(|m| m.id).collect::<Vec<_>>(), ids[1..], "the retried head and its run");
    assert_eq!((again[0].attempts, again[1].attempts), (1, 0), "a released message counts no attempt");
}

/// A planned row that the claim skipped (locked by another transaction since the read) cuts
/// its key's run: the rows after it are given back at once, and the key resumes in order.
async fn a_run_the_claim_cut_short_is_given_back(store: SqlStore) {
    if Backend::of(store.connection()) == Backend::Sqlite {
        return; // One writer: a transaction holding a row lock holds every claim.
    }
    let s = sole_owner(&store).await;
    // A claim that finds something first, so Postgres holds the next one in a transaction.
    let warm = s.enqueue(vec![NewMessage::new("parts", "warm-up")]).await.unwrap();
    let lease = Lease::new(Duration::from_secs(30));
    assert_eq!(s.claim_due(10, Duration::ZERO, &lease).await.unwrap().len(), 1);
    s.complete(&warm, &lease).await.unwrap();

    let ids = s.enqueue((0..3).map(|i| NewMessage::new("parts", i.to_string()).key("k")).collect()).await.unwrap();
    let t = quoted(&store, &store.config().table);
    let seqs: Vec<i64> = query(&store, format!("SELECT seq FROM {t} WHERE status = 0 ORDER BY seq"))
        .await
        .iter()
        .map(|r| r.try_get_by_index(0).unwrap())
        .collect();
    let locker = store.connection().begin().await.unwrap();
    let lock = format!("SELECT seq FROM {t} WHERE seq = {} FOR UPDATE", seqs[1]);
    locker.query_all_raw(Statement::from_string(locker.get_database_backend(), lock)).await.unwrap();

    let lease = Lease::new(Duration::from_secs(30));
    let got = s.claim_due(1000, Duration::ZERO, &lease).await.unwrap();
    assert_eq!(got.iter().map(|m| m.id).collect::<Vec<_>>(), ids[..1], "the run up to the locked row");
    assert_eq!(s.stats().await.unwrap().claimed, 1, "the row after the locked one was given back");
    locker.rollback().await.unwrap();
    s.complete(&ids[..1], &lease).await.unwrap();
    let rest = s.claim_due(1000, Duration::ZERO, &Lease::new(TTL)).await.unwrap();
    assert_eq!(rest.iter().map(|m| m.id).collect::<Vec<_>>(), ids[1..], "then the rest, in order");
}

/// A relay whose bus fails some messages once: each failure gives back the rest of its run,
/// and every key is still published in order, each message once.
async fn failures_mid_run_keep_key_order(store: SqlStore) {
    let (n, keys) = (600, 20);
    let failed = Arc::new(std::sync::Mutex::new(HashSet::new()));
    let seen = failed.clone();
    let bus = Arc::new(MemoryBus::with_hook(move |m| {
        let i: usize = std::str::from_utf8(&m.payload).ok()?.parse().ok()?;
        (i % 7 == 3 && seen.lock().unwrap().insert(i)).then(|| PublishOutcome::Retryable("flaky".into()))
    }));
    let s = Arc::new(Killable::new(sole_owner(&store).await));
    s.enqueue((0..n).map(|i| keyed(i, keys)).collect()).await.unwrap();
    let r = relay(s.clone(), bus.clone());
    eventually("the backlog to drain", Duration::from_secs(60), || async { (bus.len() >= n).then_some(()) }).await;
    r.shutdown().await.unwrap();
    assert_eq!(check_key_order(&bus.messages(), keys, n), 0, "no duplicates");
    assert_eq!(failed.lock().unwrap().len(), n.div_ceil(7), "each failed once");
    assert_eq!(s.stats().await.unwrap().pending, 0);
}

/// Sweeps that found only keyed rows skip the window sweep for rows without a partition; a
/// keyless message enqueued after them is still claimed by the next sweep, whichever kind
/// goes first.
async fn keyless_rows_are_swept_after_keyed_only_sweeps(store: SqlStore) {
    let s = sole_owner(&store).await;
    let lease = Lease::new(Duration::from_secs(30));
    // Two rows per key: the heads are claimed by id, and the rest wait behind them.
    let ids = s.enqueue((0..40).map(|i| keyed(i, 20)).collect()).await.unwrap();
    let heads = s.claim_ids(&ids, &lease).await.unwrap();
    assert_eq!(heads.len(), 20);
    assert!(s.claim_due(1000, Duration::ZERO, &lease).await.unwrap().is_empty(), "the rest wait behind their heads");
    for round in 0..4 {
        let id = s.enqueue(vec![NewMessage::new("parts", format!("free {round}"))]).await.unwrap()[0];
        let got = s.claim_due(1000, Duration::ZERO, &lease).await.unwrap();
        let ids: Vec<MessageId> = got.iter().map(|m| m.id).collect();
        assert_eq!(ids, vec![id], "round {round}: the keyless message, and nothing behind a head");
    }
}

/// A keyed row without a partition (written by a writer from before partitions, during a
/// rolling upgrade) is its key's head: the key's partitioned rows wait behind it.
async fn a_row_without_a_partition_holds_back_the_rest_of_its_key(store: SqlStore) {
    let s = sole_owner(&store).await;
    let t = quoted(&store, &store.config().table);
    let old = s.enqueue(vec![NewMessage::new("parts", "old writer").key("k")]).await.unwrap();
    let stmt = format!("UPDATE {t} SET partition_no = NULL");
    store
        .connection()
        .execute_raw(Statement::from_string(store.connection().get_database_backend(), stmt))
        .await
        .unwrap();
    let new = s.enqueue(vec![NewMessage::new("parts", "new writer").key("k")]).await.unwrap();
    let lease = Lease::new(Duration::from_secs(30));
    for sweep in 0..2 {
        // Sweeps take turns at going first: keyed rows first, then the rest, or the other way.
        let got = s.claim_due(1000, Duration::ZERO, &lease).await.unwrap();
        assert_eq!(got.iter().map(|m| m.id).collect::<Vec<_>>(), old, "sweep {sweep}: the old row, alone");
        s.release(&old, &lease).await.unwrap();
    }
    let got = s.claim_due(1000, Duration::ZERO, &lease).await.unwrap();
    s.complete(&ids_of(&got), &lease).await.unwrap();
    let rest = s.claim_due(1000, Duration::ZERO, &lease).await.unwrap();
    assert_eq!(ids_of(&rest), new, "then the partitioned row");
}

/// A partition count other than the one the table's leases were made for is refused while
/// keyed messages wait (a key would sit in two partitions and lose its order); once they are
/// published, the migration takes the new count.
async fn a_changed_partition_count_is_refused_while_keyed_messages_wait(store: SqlStore) {
    let s = sole_owner(&store).await;
    let waiting = s.enqueue(vec![NewMessage::new("parts", "waits").key("k")]).await.unwrap();
    let fewer = store.config().clone().key_partitions(128).partition_lease_ttl(TTL);
    let err = migrate(store.connection(), &fewer).await.unwrap_err();
    assert!(err.to_string().contains("store.key_partitions is 128, but the partition leases"), "{err}");
    let other = SqlStore::new(store.connection().clone(), fewer.clone()).unwrap();
    let lease = Lease::new(Duration::from_secs(30));
    assert!(other.claim_due(1000, Duration::ZERO, &lease).await.unwrap().is_empty(), "it holds no partition");

    let got = s.claim_due(1000, Duration::ZERO, &lease).await.unwrap();
    assert_eq!(ids_of(&got), waiting);
    s.complete(&waiting, &lease).await.unwrap();
    migrate(store.connection(), &fewer).await.expect("with no keyed message waiting, the count may change");
    let renumbered = SqlStore::new(store.connection().clone(), fewer).unwrap();
    let next = renumbered.enqueue(vec![NewMessage::new("parts", "next").key("k")]).await.unwrap();
    let got = eventually("the store with the new count to claim", Duration::from_secs(20), || async {
        Some(renumbered.claim_due(1000, Duration::ZERO, &lease).await.unwrap()).filter(|got| !got.is_empty())
    })
    .await;
    assert_eq!(ids_of(&got), next);
}

fn ids_of(messages: &[OutboxMessage]) -> Vec<MessageId> {
    messages.iter().map(|m| m.id).collect()
}

fn relay(store: Arc<Killable<SqlStore>>, bus: Arc<MemoryBus>) -> RelayHandle {
    let fallback =
        FallbackConfig::default().min_age(Duration::ZERO).interval(Duration::from_millis(20)).batch_size(100);
    Relay::builder(store, bus)
        .without_listener()
        .fallback(fallback)
        .claim_ttl(Duration::from_secs(2))
        .build()
        .unwrap()
        .spawn()
}

/// Per key, the messages' first publishes follow enqueue order; returns the duplicates.
fn check_key_order(published: &[OutboxMessage], keys: usize, n: usize) -> usize {
    let mut seen = HashSet::new();
    let mut next: HashMap<String, usize> = HashMap::new();
    let mut duplicates = 0;
    for m in published {
        let i: usize = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
        if !seen.insert(i) {
            duplicates += 1;
            continue;
        }
        let key = m.key.clone().unwrap();
        let expected = next.entry(key.clone()).or_insert(i % keys);
        assert_eq!(i, *expected, "{key}: message {i} published before message {expected}");
        *expected += keys;
    }
    assert_eq!(seen.len(), n, "every message published");
    duplicates
}

/// Four relays drain a keyed backlog while partitions move: one shuts down, one dies, one
/// joins. Every message is published, each key's in order.
async fn per_key_order_holds_while_partitions_move(store: SqlStore) {
    let (n, keys) = (3_000, 60);
    let bus = Arc::new(MemoryBus::with_hook(|_| {
        // Slow enough that the moves happen mid-drain.
        std::thread::sleep(Duration::from_micros(300));
        None
    }));
    let stores: Vec<Arc<Killable<SqlStore>>> = (0..4).map(|_| Arc::new(Killable::new(peer(&store)))).collect();
    let mut relays: Vec<Option<RelayHandle>> = stores.iter().map(|s| Some(relay(s.clone(), bus.clone()))).collect();
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        store.enqueue(chunk.iter().map(|&i| keyed(i, keys)).collect()).await.unwrap();
    }
    eventually("the drain to start", Duration::from_secs(30), || async { (bus.len() >= n / 5).then_some(()) }).await;
    relays[0].take().unwrap().shutdown().await.unwrap();
    stores[1].kill();
    let joined = Arc::new(Killable::new(peer(&store)));
    relays.push(Some(relay(joined.clone(), bus.clone())));
    // The leaver's and the dead relay's partitions move to the others, some to the newcomer.
    eventually("the partitions to move off the leaver and the dead relay", Duration::from_secs(20), || async {
        let o = owners(&store).await;
        (held(&o, stores[0].inner()) == 0 && held(&o, stores[1].inner()) == 0 && held(&o, joined.inner()) > 0)
            .then_some(())
    })
    .await;

    let pending = || async { store.stats().await.is_ok_and(|s| s.pending == 0).then_some(()) };
    eventually("the backlog to drain", Duration::from_secs(60), pending).await;
    for r in relays.into_iter().flatten() {
        let _ = r.shutdown().await;
    }
    let duplicates = check_key_order(&bus.messages(), keys, n);
    // Only the dead relay's unsettled claims can be published twice.
    assert!(duplicates <= 200, "{duplicates} duplicates");
}

/// A table made before key partitions (no `partition_no`, no lease tables) with pending keyed
/// rows: the migration adds the column and tables, gives each row its key's partition, and a
/// relay then drains it in key order.
async fn migration_upgrades_a_table_from_before_partitions(store: SqlStore) {
    let table = store.config().table.clone();
    let t = quoted(&store, &table);
    let db = store.connection();
    let (n, keys) = (300, 7);
    make_pre_partition_table(db, &table, n, keys).await;

    migrate(db, store.config()).await.unwrap();
    migrate(db, store.config()).await.expect("the upgrade is idempotent");
    let found = query(&store, format!("SELECT msg_key, partition_no FROM {t}")).await;
    assert_eq!(found.len(), n);
    for r in &found {
        let key: String = r.try_get_by_index(0).unwrap();
        let partition: Option<i32> = r.try_get_by_index(1).unwrap();
        assert_eq!(partition, Some(partition_of(&key, 256)), "{key}");
    }

    let upgraded = Arc::new(Killable::new(peer(&store)));
    let bus = Arc::new(MemoryBus::new());
    let r = relay(upgraded, bus.clone());
    eventually("the upgraded table to drain", Duration::from_secs(30), || async { (bus.len() >= n).then_some(()) })
        .await;
    r.shutdown().await.unwrap();
    assert_eq!(check_key_order(&bus.messages(), keys, n), 0);
}

per_backend!(
    relays_split_the_partitions_and_claim_only_their_own,
    a_sweep_claims_runs_up_to_a_row_that_is_not_ready,
    a_run_the_claim_cut_short_is_given_back,
    failures_mid_run_keep_key_order,
    keyless_rows_are_swept_after_keyed_only_sweeps,
    a_row_without_a_partition_holds_back_the_rest_of_its_key,
    a_changed_partition_count_is_refused_while_keyed_messages_wait,
    per_key_order_holds_while_partitions_move,
    migration_upgrades_a_table_from_before_partitions,
);
