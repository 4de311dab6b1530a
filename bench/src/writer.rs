//! What the outbox adds to a business transaction, against the same transaction by hand.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use outbox::{ChannelNotifier, NewMessage, Notifier};
use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};

use crate::env::{Env, suffix};
use crate::report::{Report, rate};

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

pub(crate) async fn run(env: &Env, report: &mut Report, quick: bool) {
    let n = if quick { 400 } else { 2_000 };
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

    // Interleave rounds so drift on a shared machine hits every variant alike.
    let (mut fw, mut hand, mut fw_full) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for _ in 0..4 {
        fw += framework(&normal_store, &biz, n / 4).await;
        hand += by_hand(env, &table.name, &biz, n / 4).await;
        fw_full += framework(&full_store, &biz, n / 4).await;
    }
    let ratio = fw.as_secs_f64() / hand.as_secs_f64();
    report.row("writer", "hand-written SQL: business row + outbox row, 1 tx", rate(n, hand), "tx/s", None);
    report.row(
        "writer",
        "framework transaction() + enqueue + notify",
        rate(n, fw),
        "tx/s",
        Some(("hand-written (time ratio)", ratio, 1.15)),
    );
    let full_ratio = fw_full.as_secs_f64() / fw.as_secs_f64();
    report.row(
        "writer",
        &format!("framework with a full notice channel ({} notices dropped)", full.dropped()),
        rate(n, fw_full),
        "tx/s",
        Some(("framework with a drained channel (time ratio)", full_ratio, 1.15)),
    );
    let _ = env.db.execute_unprepared(&format!("DROP TABLE \"{biz}\"")).await;
    table.drop().await;
}
