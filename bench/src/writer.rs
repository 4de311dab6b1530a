//! What the outbox adds to a business transaction, against the same transaction by hand.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use outbox::{ChannelNotifier, NewMessage, Notifier};
use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};

use crate::env::{Env, suffix};
use crate::report::{Check, Goal, Report, Row, num, rate, spread};

async fn framework(store: &outbox::sea_orm::SqlStore, biz: &str, n: usize) -> Duration {
    let start = Instant::now();
    for i in 0..n {
        let sql = format!("INSERT INTO \"{biz}\" (id, data) VALUES (gen_random_uuid(), 'order {i}')");
        store
            .transaction(|txn| {
                Box::pin(async move {
                    txn.execute_unprepared(&sql)
                        .await
                        .map_err(|e| outbox::Error::permanent("bench", e.to_string(), None))?;
                    let event = NewMessage::new("orders.placed", vec![b'x'; 256]).key(format!("order-{i}"));
                    Ok::<_, outbox::Error>(((), vec![event]))
                })
            })
            .await
            .expect("framework tx");
    }
    start.elapsed()
}

async fn by_hand(env: &Env, table: &str, biz: &str, n: usize) -> Duration {
    let start = Instant::now();
    for i in 0..n {
        let txn = env.db.begin().await.expect("begin");
        txn.execute_unprepared(&format!("INSERT INTO \"{biz}\" (id, data) VALUES (gen_random_uuid(), 'order {i}')"))
            .await
            .expect("biz");
        let stmt = Statement::from_sql_and_values(
            DbBackend::Postgres,
            format!(
                "INSERT INTO \"{table}\" (id, topic, msg_key, payload, headers, status, attempts, created_at, available_at) \
                 VALUES ($1, $2, $3, $4, $5, 0, 0, $6, $6)"
            ),
            [
                uuid::Uuid::now_v7().into(),
                "orders.placed".into(),
                format!("order-{i}").into(),
                vec![b'x'; 256].into(),
                "{}".into(),
                outbox::message::now_millis().into(),
            ],
        );
        txn.execute_raw(stmt).await.expect("outbox row");
        txn.commit().await.expect("commit");
    }
    start.elapsed()
}

/// Runs the framework writer, the hand-written one and the framework with a full notice
/// channel in interleaved rounds, so drift on a shared machine hits all three alike.
pub(crate) async fn run(env: &Env, report: &mut Report, quick: bool) {
    let (n, rounds) = if quick { (1_200, 12) } else { (6_000, 30) };
    let per_round = n / rounds;
    println!("# writer: {n} transactions per variant in {rounds} interleaved rounds");
    let table = env.table(false).await;
    let biz = format!("bench_orders_{}", suffix());
    env.db
        .execute_unprepared(&format!("CREATE TABLE \"{biz}\" (id uuid PRIMARY KEY, data text NOT NULL)"))
        .await
        .expect("biz table");

    // A notifier whose listener drains it (the normal case), and one nobody drains (full).
    let drained = Arc::new(ChannelNotifier::new(1024));
    let mut notices = drained.subscribe().await.expect("subscribe");
    tokio::spawn(async move { while notices.next().await.is_some() {} });
    let full = Arc::new(ChannelNotifier::new(1));
    let normal_store = table.store.clone().with_notifier(drained);
    let full_store = table.store.clone().with_notifier(full.clone());

    // Warm up the pool and the prepared statements of each variant.
    framework(&normal_store, &biz, 50).await;
    by_hand(env, &table.name, &biz, 50).await;

    // Short rounds in rotating order; the median of per-round ratios shrugs off the bursts of
    // load other people put on the machine, which a ratio of total times does not.
    let (mut fw, mut hand, mut fw_full) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let (mut vs_hand, mut vs_drained) = (Vec::new(), Vec::new());
    let cpu0 = env.cpu().await;
    for round in 0..rounds {
        let mut t = [Duration::ZERO; 3];
        for k in 0..3 {
            let variant = (round + k) % 3;
            t[variant] = match variant {
                0 => framework(&normal_store, &biz, per_round).await,
                1 => by_hand(env, &table.name, &biz, per_round).await,
                _ => framework(&full_store, &biz, per_round).await,
            };
        }
        vs_hand.push(t[0].as_secs_f64() / t[1].as_secs_f64());
        vs_drained.push(t[2].as_secs_f64() / t[0].as_secs_f64());
        fw += t[0];
        hand += t[1];
        fw_full += t[2];
    }
    let usage = cpu0.until(&env.cpu().await);
    let n = per_round * rounds;
    report.add(
        Row::new(
            "writer",
            "hand-written SQL: BEGIN; INSERT business row; INSERT outbox row; COMMIT",
            rate(n, hand),
            "tx/s",
        )
        .n(n)
        .note(usage.load()),
    );
    let (median, lo, hi) = spread(&vs_hand);
    report.add(
        Row::new("writer", "SqlStore::transaction: business row + enqueue, commit, notify", rate(n, fw), "tx/s")
            .n(n)
            .check(Check::ratio("the hand-written time (median of rounds)", median, Some(Goal::AtMost(1.15))))
            .note(format!(
                "rounds p10–p90 {lo:.2}–{hi:.2}; ratio of total times {:.2}",
                fw.as_secs_f64() / hand.as_secs_f64()
            )),
    );
    let (median, lo, hi) = spread(&vs_drained);
    report.add(
        Row::new("writer", "the same with a full notice channel (capacity 1, never drained)", rate(n, fw_full), "tx/s")
            .n(n)
            .check(Check::ratio("the drained-channel time (median of rounds)", median, Some(Goal::AtMost(1.15))))
            .note(format!("rounds p10–p90 {lo:.2}–{hi:.2}; {} notices dropped", num(full.dropped() as f64))),
    );
    let _ = env.db.execute_unprepared(&format!("DROP TABLE \"{biz}\"")).await;
    table.drop().await;
}
