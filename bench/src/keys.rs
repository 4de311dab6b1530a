//! Keyed drains beside the unkeyed one, in the same run: key partitions against the per-row
//! head-of-key check, one relay against four; and how fast partitions move between relays.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outbox::sea_orm::{DEFAULT_KEY_PARTITIONS, SqlStore};
use outbox::testkit::Killable;
use outbox::{FallbackConfig, Relay, RelayHandle};
use sea_orm::ConnectionTrait;
use uuid::Uuid;

use crate::drain::{Broker, Drain, Drained, Plan, Sink, drain_row, relay_drain};
use crate::env::{Env, Keys, stmt};
use crate::report::{Check, Goal, Report, Row, num};

/// Runs the keyed drains, then the rebalancing scenario.
pub(crate) async fn run(env: &Env, report: &mut Report, plan: &Plan) {
    let n = plan.n_keyed;
    let rounds = plan.keyed_rounds;
    println!("# keys: N = {n} per drain, JetStream, batch 1,000, sweep concurrency 2, best of {rounds} rounds");
    let drain = |keys, relays, partitions| Drain {
        broker: Broker::JetStream,
        n,
        keys,
        batch: 1000,
        relays,
        concurrency: 2,
        partitions,
    };
    let deadline = plan.deadline.min(Duration::from_secs(60));
    let mut scenarios = vec![drain(Keys::None, 1, DEFAULT_KEY_PARTITIONS)];
    for &keys in &plan.key_counts {
        for &relays in &plan.keyed_relays {
            scenarios.push(drain(Keys::Spread(keys), relays, DEFAULT_KEY_PARTITIONS));
        }
    }
    // The per-row head-of-key check, as before partitions, for comparison.
    for &relays in &plan.keyed_relays {
        scenarios.push(drain(Keys::Spread(1_000), relays, 0));
    }
    let mut best: Vec<Option<Drained>> = scenarios.iter().map(|_| None).collect();
    for _ in 0..rounds {
        for (d, kept) in scenarios.iter().zip(best.iter_mut()) {
            let r = relay_drain(env, *d, deadline).await;
            if kept.as_ref().is_none_or(|k| r.rate > k.rate) {
                *kept = Some(r);
            }
        }
    }
    let results: Vec<(Drain, Drained)> = scenarios.into_iter().zip(best.into_iter().flatten()).collect();
    let unkeyed = results[0].1.rate;
    report.add(drain_row("keys", results[0].0, &results[0].1, None, None));
    let one_relay = |keys: usize, partitions: u16| {
        results
            .iter()
            .find(|(d, _)| d.keys == Keys::Spread(keys) && d.relays == 1 && d.partitions == partitions)
            .map(|(_, r)| r.rate)
    };
    for (d, r) in &results[1..] {
        let Keys::Spread(keys) = d.keys else { continue };
        let goal = match (keys, d.relays, d.partitions) {
            (1_000, 1, DEFAULT_KEY_PARTITIONS) => Some(Goal::AtLeast(0.6)),
            (10_000, 1, DEFAULT_KEY_PARTITIONS) => Some(Goal::AtLeast(0.8)),
            _ => None,
        };
        let mut row =
            drain_row("keys", *d, r, None, None).check(Check::ratio("unkeyed, 1 relay", r.rate / unkeyed, goal));
        if d.relays > 1
            && let Some(one) = one_relay(keys, d.partitions)
        {
            let goal = (keys == 1_000 && d.partitions > 0).then_some(Goal::AtLeast(1.0));
            row = row.check(Check::ratio("1 relay, same keys", r.rate / one, goal));
        }
        report.add(row);
    }
    rebalance(env, report, n).await;
}

/// Partition → owner, from the lease table.
pub(crate) async fn owners(env: &Env, table: &str) -> HashMap<i32, Option<Uuid>> {
    let sql = format!("SELECT partition_no, owner FROM \"{table}_partitions\" WHERE lease_until > {}", now_ms());
    let rows = env.db.query_all_raw(stmt(sql)).await.expect("owners");
    rows.iter()
        .map(|r| {
            (r.try_get_by_index::<i32>(0).expect("partition"), r.try_get_by_index::<Option<Uuid>>(1).ok().flatten())
        })
        .collect()
}

fn now_ms() -> i64 {
    outbox::message::now_millis()
}

/// Polls until `done` holds for the lease table (every 20 ms), or 60 s; the time it took.
pub(crate) async fn until(env: &Env, table: &str, done: impl Fn(&HashMap<i32, Option<Uuid>>) -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if done(&owners(env, table).await) {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("partitions did not settle within 60 s");
}

pub(crate) fn held_by(owners: &HashMap<i32, Option<Uuid>>, owner: Uuid) -> usize {
    owners.values().filter(|o| **o == Some(owner)).count()
}

/// Relay B drains a keyed backlog; A joins, then dies (its store stops answering), then C
/// joins and shuts down gracefully. Times how long each move of partitions takes.
async fn rebalance(env: &Env, report: &mut Report, n: usize) {
    let table = env.table(false).await;
    table.prefill(n, "drain", Keys::Spread(1_000)).await;
    let (bus, sink) = Sink::new(env, Broker::JetStream).await;
    let config = table.store.config().clone();
    let ttl = config.partition_lease_ttl;
    let fallback =
        FallbackConfig::default().interval(Duration::from_millis(20)).min_age(Duration::ZERO).batch_size(1000);
    let start_relay = |store: Arc<Killable<SqlStore>>| -> RelayHandle {
        Relay::builder(store, bus.clone()).without_listener().fallback(fallback.clone()).build().expect("relay").spawn()
    };
    let store = |db: &sea_orm::DatabaseConnection| {
        Arc::new(Killable::new(SqlStore::new(db.clone(), config.clone()).expect("store")))
    };
    let partitions = usize::from(config.key_partitions);

    let b = store(&table.db);
    let b_id = b.inner().partition_owner().expect("partitioned");
    let b_relay = start_relay(b.clone());
    until(env, &table.name, |o| held_by(o, b_id) == partitions).await;

    let a = store(&table.db);
    let a_id = a.inner().partition_owner().expect("partitioned");
    let a_relay = start_relay(a.clone());
    let joined = until(env, &table.name, |o| held_by(o, a_id) == partitions / 2).await;
    let a_parts: Vec<i32> =
        owners(env, &table.name).await.into_iter().filter(|(_, o)| *o == Some(a_id)).map(|(p, _)| p).collect();

    // A dies: each of its partitions is timed until B holds it.
    a.kill();
    let killed = Instant::now();
    let mut moved: HashMap<i32, Duration> = HashMap::new();
    while moved.len() < a_parts.len() && killed.elapsed() < Duration::from_secs(60) {
        let o = owners(env, &table.name).await;
        for p in &a_parts {
            if o.get(p).copied().flatten() == Some(b_id) {
                moved.entry(*p).or_insert_with(|| killed.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut times: Vec<Duration> = moved.values().copied().collect();
    times.sort();
    let p50 = times.get(times.len() / 2).copied().unwrap_or_default();
    let max = times.last().copied().unwrap_or_default();

    let c = store(&table.db);
    let c_id = c.inner().partition_owner().expect("partitioned");
    let c_relay = start_relay(c.clone());
    until(env, &table.name, |o| held_by(o, c_id) == partitions / 2).await;
    let leaving = Instant::now();
    c_relay.shutdown().await.expect("shutdown");
    let left = leaving.elapsed() + until(env, &table.name, |o| held_by(o, b_id) == partitions).await;

    let drained = table.wait_drained(Duration::from_secs(60)).await;
    let arrived = sink.count(env, "drain").await;
    drop(a_relay);
    let _ = b_relay.shutdown().await;
    sink.remove(env).await;
    table.drop().await;

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let lost = (n as u64).saturating_sub(arrived);
    let tail = format!(
        "partition lease ttl {:?}; backlog of {} over 1,000 keys drained: {drained}, {} lost",
        ttl,
        num(n as f64),
        num(lost as f64)
    );
    report.add(
        Row::new("keys", "rebalance: a relay dies, its partitions held by the survivor (p50)", ms(p50), "ms")
            .check(Check::absolute(ms(p50), Goal::AtMost(ms(ttl) * 1.5), "ms"))
            .note(format!("{} partitions moved; {tail}", a_parts.len())),
    );
    report.add(
        Row::new("keys", "rebalance: a relay dies, its partitions held by the survivor (max)", ms(max), "ms")
            .check(Check::absolute(ms(max), Goal::AtMost(ms(ttl) * 1.5), "ms")),
    );
    report.add(Row::new("keys", "rebalance: a relay joins, holds its half", ms(joined), "ms"));
    report.add(Row::new("keys", "rebalance: a relay shuts down, the survivor holds all", ms(left), "ms"));
    assert_eq!(lost, 0, "messages lost while partitions moved");
}
