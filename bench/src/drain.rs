//! Backlog drain: a pre-filled table emptied by 1–4 relays, beside the raw rates of each part.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use outbox::nats::async_nats;
use outbox::{Bus, FallbackConfig, Lease, OutboxStore, Relay};
use sea_orm::ConnectionTrait;

use crate::env::Env;
use crate::report::{Report, rate};

/// Drains `n` prefilled messages with `relays` relays of batch `batch` into `bus`; msg/s.
async fn relay_drain(env: &Env, bus: Arc<dyn Bus>, n: usize, batch: usize, relays: usize) -> f64 {
    let table = env.table(false).await;
    table.prefill(n, "drain", true).await;
    let start = Instant::now();
    let handles: Vec<_> = (0..relays)
        .map(|_| {
            Relay::builder(Arc::new(table.store.clone()), bus.clone())
                .without_listener()
                .fallback(
                    FallbackConfig::default()
                        .interval(Duration::from_millis(50))
                        .min_age(Duration::ZERO)
                        .batch_size(batch)
                        .concurrency(2),
                )
                .build()
                .expect("relay")
                .spawn()
        })
        .collect();
    assert!(table.wait_drained(Duration::from_secs(600)).await, "drained");
    let elapsed = start.elapsed();
    for h in handles {
        h.shutdown().await.expect("shutdown");
    }
    table.drop().await;
    rate(n, elapsed)
}

/// Raw JetStream: pipelined publishes with dedup ids, a window of 256 acks.
async fn raw_jetstream(env: &Env, n: usize) -> f64 {
    let (bus, stream, prefix) = env.jetstream().await;
    let js = async_nats::jetstream::new(env.nats.clone());
    let payload = bytes::Bytes::from(vec![b'x'; 256]);
    let start = Instant::now();
    let acks = futures::stream::iter(0..n)
        .map(|i| {
            let (js, payload, subject) = (js.clone(), payload.clone(), format!("{prefix}raw"));
            async move {
                let msg = async_nats::jetstream::message::PublishMessage::build()
                    .payload(payload)
                    .message_id(format!("raw-{i}"));
                js.send_publish(subject, msg).await.expect("send").await.expect("ack")
            }
        })
        .buffered(256)
        .count()
        .await;
    let r = rate(acks, start.elapsed());
    drop(bus);
    env.drop_stream(&stream).await;
    r
}

/// Raw Redis: pipelined XADD in pipelines of 1,000.
async fn raw_redis(env: &Env, n: usize) -> f64 {
    use outbox::redis::redis;
    let key = format!("bench:{}:raw", crate::env::suffix());
    let mut conn = env.redis.clone();
    let payload = vec![b'x'; 256];
    let start = Instant::now();
    let mut done = 0;
    while done < n {
        let mut pipe = redis::pipe();
        for i in done..(done + 1000).min(n) {
            pipe.cmd("XADD").arg(&key).arg("*").arg("payload").arg(&payload).arg("Outbox-Message-Id").arg(i).ignore();
        }
        let _: () = pipe.query_async(&mut conn).await.expect("xadd");
        done = (done + 1000).min(n);
    }
    let r = rate(n, start.elapsed());
    let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(&key).query_async(&mut conn).await;
    r
}

/// Raw SQL claim+delete: the single statement a hand-tuned relay would run.
async fn raw_sql(env: &Env, n: usize, batch: usize) -> f64 {
    let table = env.table(false).await;
    table.prefill(n, "raw", false).await;
    let sql = format!(
        "DELETE FROM \"{t}\" WHERE seq IN (SELECT seq FROM \"{t}\" WHERE status = 0 ORDER BY seq LIMIT {batch} \
         FOR UPDATE SKIP LOCKED) RETURNING id, topic, msg_key, payload, headers",
        t = table.name
    );
    let start = Instant::now();
    let mut done = 0;
    loop {
        let rows = table
            .db
            .query_all_raw(sea_orm::Statement::from_string(sea_orm::DbBackend::Postgres, sql.clone()))
            .await
            .expect("delete");
        if rows.is_empty() {
            break;
        }
        done += rows.len();
    }
    let r = rate(done, start.elapsed());
    table.drop().await;
    r
}

/// The store's own claim_due + complete, no broker.
async fn store_claim_complete(env: &Env, n: usize, batch: usize) -> f64 {
    let table = env.table(false).await;
    table.prefill(n, "store", false).await;
    let start = Instant::now();
    let mut done = 0;
    loop {
        let lease = Lease::new(Duration::from_secs(30));
        let claimed = table.store.claim_due(batch, Duration::ZERO, &lease).await.expect("claim");
        if claimed.is_empty() {
            break;
        }
        let ids: Vec<_> = claimed.iter().map(|m| m.id).collect();
        done += table.store.complete(&ids, &lease).await.expect("complete") as usize;
    }
    let r = rate(done, start.elapsed());
    table.drop().await;
    r
}

/// The classic outbox publisher: one message per transaction, the ack awaited inside it.
async fn seed_style(env: &Env, n: usize) -> f64 {
    let table = env.table(false).await;
    table.prefill(n, "seed", false).await;
    let (_bus, stream, prefix) = env.jetstream().await;
    let js = async_nats::jetstream::new(env.nats.clone());
    let select = format!(
        "SELECT seq, id::text AS id, payload FROM \"{}\" WHERE status = 0 ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED",
        table.name
    );
    let start = Instant::now();
    let mut done = 0;
    loop {
        let txn = sea_orm::TransactionTrait::begin(&table.db).await.expect("begin");
        let Some(row) = txn
            .query_one_raw(sea_orm::Statement::from_string(sea_orm::DbBackend::Postgres, select.clone()))
            .await
            .expect("select")
        else {
            txn.commit().await.expect("commit");
            break;
        };
        let seq: i64 = row.try_get("", "seq").expect("seq");
        let id: String = row.try_get("", "id").expect("id");
        let payload: Vec<u8> = row.try_get("", "payload").expect("payload");
        let msg = async_nats::jetstream::message::PublishMessage::build().payload(payload.into()).message_id(id);
        js.send_publish(format!("{prefix}seed"), msg).await.expect("send").await.expect("ack");
        txn.execute_unprepared(&format!("DELETE FROM \"{}\" WHERE seq = {seq}", table.name)).await.expect("delete");
        txn.commit().await.expect("commit");
        done += 1;
    }
    let r = rate(done, start.elapsed());
    table.drop().await;
    env.drop_stream(&stream).await;
    r
}

pub(crate) async fn run(env: &Env, report: &mut Report, quick: bool) {
    let n = if quick { 20_000 } else { 200_000 };
    let n_batch1 = if quick { 2_000 } else { 10_000 };
    let n_seed = if quick { 1_000 } else { 5_000 };
    let relay_counts: &[usize] = if quick { &[1, 4] } else { &[1, 2, 4] };

    let raw_js = raw_jetstream(env, n).await;
    report.row("drain", "raw JetStream publish (pipelined, dedup ids)", raw_js, "msg/s", None);
    let raw_rd = raw_redis(env, n).await;
    report.row("drain", "raw Redis XADD (pipelined x1000)", raw_rd, "msg/s", None);
    let mut raw_sql_best = 0.0f64;
    for batch in [100, 1000] {
        let raw = raw_sql(env, n, batch).await;
        raw_sql_best = raw_sql_best.max(raw);
        report.row("drain", &format!("raw SQL claim+delete, batch {batch}"), raw, "rows/s", None);
        let store = store_claim_complete(env, n, batch).await;
        report.row(
            "drain",
            &format!("store claim_due+complete, batch {batch}"),
            store,
            "rows/s",
            Some(("raw SQL", store / raw, 0.8)),
        );
    }
    let seed = seed_style(env, n_seed).await;
    report.row("drain", &format!("seed-style relay (1 msg/tx, ack in tx), N={n_seed}"), seed, "msg/s", None);

    for (broker, raw) in [(Broker::JetStream, raw_js), (Broker::Redis, raw_rd)] {
        let floor = raw.min(raw_sql_best);
        for batch in [1, 100, 1000] {
            for &relays in relay_counts {
                let count = if batch == 1 { n_batch1 } else { n };
                let (bus, cleanup) = broker.bus(env).await;
                let r = relay_drain(env, bus, count, batch, relays).await;
                cleanup.run(env).await;
                let name = format!("relay → {broker:?}, batch {batch}, {relays} relay(s), N={count}");
                report.row("drain", &name, r, "msg/s", Some(("min(raw SQL, raw broker)", r / floor, 0.6)));
                if batch == 1000 && relays == *relay_counts.last().unwrap_or(&1) {
                    report.row(
                        "drain",
                        &format!("  … that relay vs seed-style ({broker:?})"),
                        r / seed,
                        "x",
                        Some(("seed-style", r / seed, 20.0)),
                    );
                }
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Broker {
    JetStream,
    Redis,
}

enum Cleanup {
    Stream(String),
    Prefix(String),
}

impl Cleanup {
    async fn run(self, env: &Env) {
        match self {
            Self::Stream(s) => env.drop_stream(&s).await,
            Self::Prefix(p) => env.drop_redis_prefix(&p).await,
        }
    }
}

impl Broker {
    async fn bus(self, env: &Env) -> (Arc<dyn Bus>, Cleanup) {
        match self {
            Self::JetStream => {
                let (bus, stream, _) = env.jetstream().await;
                (bus, Cleanup::Stream(stream))
            }
            Self::Redis => {
                let (bus, prefix) = env.redis_bus().await;
                (bus, Cleanup::Prefix(prefix))
            }
        }
    }
}
