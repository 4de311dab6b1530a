//! A head that cannot be claimed (dead, or backing off) far below the rest of the backlog must
//! not shrink sweeps: every sweep still claims the head of every other key.
#![cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use outbox_core::{Disposition, Failure, Lease, MessageId, NewMessage, OutboxStore};
use outbox_sea_orm::SqlStore;
use sea_orm::ConnectionTrait;

const TTL: Duration = Duration::from_secs(30);
const KEYS: usize = 10;
const PER_KEY: usize = 100;
/// Where `seq` jumps to after the stuck head and its successor: past any sweep window.
const GAP_TO: i64 = 20_000;

/// How the old head of key `stuck` cannot be claimed.
#[derive(Clone, Copy)]
enum Stuck {
    Dead,
    BackingOff,
}

/// A stuck head and its waiting successor on key `stuck`, `seq` moved on by [`GAP_TO`], then
/// [`PER_KEY`] messages on each of [`KEYS`] keys. Returns each key's ids in enqueue order.
async fn stuck_then_backlog(store: &SqlStore, stuck: Stuck) -> HashMap<String, Vec<MessageId>> {
    let head = store.enqueue(vec![NewMessage::new("stuck.t", "head").key("stuck")]).await.unwrap();
    let lease = Lease::new(TTL);
    assert_eq!(store.claim_ids(&head, &lease).await.unwrap().len(), 1);
    let disposition = match stuck {
        Stuck::Dead => Disposition::DeadLetter,
        Stuck::BackingOff => Disposition::RetryAfter(Duration::from_secs(3600)),
    };
    store.fail(&[Failure { id: head[0], error: "rejected".into(), disposition }], &lease).await.unwrap();
    store.enqueue(vec![NewMessage::new("stuck.t", "waits").key("stuck")]).await.unwrap();
    restart_seq(store, GAP_TO).await;

    let mut backlog = Vec::new();
    for i in 0..PER_KEY {
        for k in 0..KEYS {
            backlog.push(NewMessage::new("stuck.t", format!("{k}/{i}")).key(format!("k{k}")));
        }
    }
    let mut by_key: HashMap<String, Vec<MessageId>> = HashMap::new();
    for m in &backlog {
        by_key.entry(m.key.clone().unwrap()).or_default().push(m.id);
    }
    store.enqueue(backlog).await.unwrap();
    by_key
}

/// The next `seq` the table hands out is `next`.
async fn restart_seq(store: &SqlStore, next: i64) {
    let table = &store.config().table;
    let sql = match store.backend() {
        "postgres" => format!("ALTER TABLE \"{table}\" ALTER COLUMN seq RESTART WITH {next}"),
        "mysql" => format!("ALTER TABLE `{table}` AUTO_INCREMENT = {next}"),
        _ => format!("UPDATE sqlite_sequence SET seq = {} WHERE name = '{table}'", next - 1),
    };
    store.connection().execute_unprepared(&sql).await.unwrap();
}

/// Every sweep claims a run from the current head of each of the ten keys (a key's next rows
/// in order, at least its head), nothing of the stuck key: at most a hundred sweeps drain the
/// backlog. Before the fix the window past the stuck row held nothing, and only the full sweep
/// (at most every 5 s) found the heads: the second sweep came back empty.
async fn every_sweep_takes_every_keys_head(store: SqlStore, stuck: Stuck) {
    let by_key = stuck_then_backlog(&store, stuck).await;
    let mut next: HashMap<&str, usize> = by_key.keys().map(|k| (k.as_str(), 0)).collect();
    let mut sweeps = 0;
    while next.values().any(|&n| n < PER_KEY) {
        assert!(sweeps < PER_KEY, "{PER_KEY} sweeps of heads drain the backlog");
        let lease = Lease::new(TTL);
        let claimed = store.claim_due(1_000, Duration::ZERO, &lease).await.unwrap();
        let mut got: Vec<MessageId> = claimed.iter().map(|m| m.id).collect();
        got.sort();
        let mut expected = Vec::new();
        for (key, ids) in &by_key {
            let from = next[key.as_str()];
            let run = ids[from..].iter().take_while(|id| got.binary_search(id).is_ok()).count();
            assert!(run > 0 || from == PER_KEY, "sweep {sweeps} claims the head of key {key}");
            expected.extend_from_slice(&ids[from..from + run]);
            next.insert(key.as_str(), from + run);
        }
        expected.sort();
        assert_eq!(got, expected, "sweep {sweeps} claims runs from the keys' heads, and nothing else");
        assert_eq!(store.complete(&got, &lease).await.unwrap(), got.len() as u64);
        sweeps += 1;
    }
    assert!(store.claim_due(1_000, Duration::ZERO, &Lease::new(TTL)).await.unwrap().is_empty());
    let stats = store.stats().await.unwrap();
    let stuck_rows = match stuck {
        Stuck::Dead => 1,
        Stuck::BackingOff => 2,
    };
    assert_eq!(stats.pending, stuck_rows, "only the stuck key's rows are left");
}

async fn every_sweep_takes_every_keys_head_past_a_dead_head(store: SqlStore) {
    every_sweep_takes_every_keys_head(store, Stuck::Dead).await;
}

async fn every_sweep_takes_every_keys_head_past_a_backing_off_head(store: SqlStore) {
    every_sweep_takes_every_keys_head(store, Stuck::BackingOff).await;
}

/// A relay with only the fallback drains the backlog in key order. Before the fix it published
/// ten messages per full sweep, one every 5 s: about 500 s for the thousand.
async fn a_fallback_relay_drains_past_a_dead_head(store: SqlStore) {
    let by_key = stuck_then_backlog(&store, Stuck::Dead).await;
    let (relay, bus) = common::fallback_relay(&store);
    let all = KEYS * PER_KEY;
    bus.wait_for(all, Duration::from_secs(60)).await.expect("the backlog drains long before the old 500 s");
    relay.shutdown().await.unwrap();

    let mut published: HashMap<String, Vec<MessageId>> = HashMap::new();
    for m in bus.messages() {
        published.entry(m.key.clone().unwrap()).or_default().push(m.id);
    }
    assert_eq!(published, by_key, "each message once, in key order; the stuck key waits");
}

per_backend!(
    every_sweep_takes_every_keys_head_past_a_dead_head,
    every_sweep_takes_every_keys_head_past_a_backing_off_head,
    a_fallback_relay_drains_past_a_dead_head,
);
