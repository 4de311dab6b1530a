//! Consumer throughput with the inbox against the same consumer without it, in one run:
//! JetStream runner, Postgres, each message one business insert, either plain (insert, then
//! ack), through `Inbox::handler` (deliveries that arrive together share an inbox
//! transaction: their ids and inserts, one commit, then the acks), or through
//! `Inbox::process` (a transaction per message). Prints messages per second of each and the
//! ratios to plain.
//!
//! `cargo run --release -p consumer --bin inbox_bench -- [messages]` (default 10 000), with
//! `NATS_URL` and `DATABASE_URL` (default the local test servers).

use std::sync::Arc;
use std::time::{Duration, Instant};

use outbox::consumer::{ConsumerConfig, Delivery, Handler, HandlerError, Processed, handler_fn};
use outbox::inbox::{Inbox, InboxConfig, migrate_inbox};
use outbox::nats::async_nats::{self, HeaderMap, jetstream};
use outbox::nats::consumer::JetStreamConsumer;
use outbox::nats::{StreamSpec, ensure_stream};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement, Value};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn insert(table: &str, id: &str) -> Statement {
    Statement::from_sql_and_values(
        DbBackend::Postgres,
        format!("INSERT INTO {table} (message_id) VALUES ($1)"),
        [Value::from(id.to_owned())],
    )
}

/// Runs `handler` as durable `durable` until it acknowledged `n` messages; messages per second.
async fn measure<H: Handler>(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
    n: u64,
    handler: H,
) -> Result<f64, BoxError> {
    let config = ConsumerConfig::default().batch(256).concurrency(32);
    let started = Instant::now();
    let running =
        JetStreamConsumer::new(js.clone(), stream, durable, "bench.dead").config(config).spawn(handler).await?;
    while running.stats().processed < n {
        if started.elapsed() > Duration::from_secs(300) {
            return Err(format!("{durable}: only {} of {n} in 300 s", running.stats().processed).into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    running.shutdown().await?;
    Ok(rate)
}

async fn pool(url: &str) -> Result<DatabaseConnection, BoxError> {
    let mut options = ConnectOptions::new(url.to_owned());
    options.max_connections(32).sqlx_logging(false);
    Ok(Database::connect(options).await?)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let n: u64 = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(10_000);
    let nats_url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let db_url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    let (stream, subject) = (format!("BENCH_{suffix}"), format!("b{suffix}.orders"));

    let js = jetstream::new(async_nats::connect(&nats_url).await?);
    ensure_stream(&js, &StreamSpec::new(&stream, [format!("b{suffix}.>")])).await?;
    for chunk in 0..n.div_ceil(1000) {
        let mut acks = Vec::new();
        for i in chunk * 1000..((chunk + 1) * 1000).min(n) {
            let mut headers = HeaderMap::new();
            headers.insert("Outbox-Message-Id", uuid::Uuid::now_v7().to_string().as_str());
            headers.insert("Outbox-Key", format!("k{}", i % 64).as_str());
            acks.push(js.publish_with_headers(subject.clone(), headers, format!(r#"{{"n":{i}}}"#).into()).await?);
        }
        for ack in acks {
            ack.await?;
        }
    }

    let db = pool(&db_url).await?;
    let (inbox_table, plain_fx, inbox_fx) =
        (format!("bench_inbox_{suffix}"), format!("bench_plain_{suffix}"), format!("bench_fx_{suffix}"));
    for t in [&plain_fx, &inbox_fx] {
        db.execute_unprepared(&format!("CREATE TABLE {t} (message_id VARCHAR(255) NOT NULL)")).await?;
    }
    let config = InboxConfig::default().table(inbox_table.clone()).consumer("bench");
    migrate_inbox(&db, &config).await?;
    let inbox = Inbox::new(db.clone(), config)?;

    let plain = {
        let (db, table) = (db.clone(), Arc::new(plain_fx.clone()));
        move || {
            let (db, table) = (db.clone(), table.clone());
            handler_fn(move |d: Delivery| {
                let (db, table) = (db.clone(), table.clone());
                async move {
                    db.execute_raw(insert(&table, &d.id)).await.map_err(HandlerError::retry_from)?;
                    Ok(Processed::Done(()))
                }
            })
        }
    };
    let grouped = {
        let (inbox, table) = (inbox.clone(), Arc::new(inbox_fx.clone()));
        move || {
            let table = table.clone();
            inbox.handler(move |txn, d| {
                let stmt = insert(&table, &d.id);
                Box::pin(async move { txn.execute_raw(stmt).await.map(|_| ()).map_err(HandlerError::retry_from) })
            })
        }
    };
    let per_message = {
        let table = Arc::new(inbox_fx.clone());
        move || {
            let (inbox, table) = (inbox.clone(), table.clone());
            handler_fn(move |d: Delivery| {
                let (inbox, stmt) = (inbox.clone(), insert(&table, &d.id));
                async move {
                    let out = inbox
                        .process(&d.id, move |txn| Box::pin(async move { txn.execute_raw(stmt).await.map(|_| ()) }));
                    out.await.map_err(HandlerError::from)
                }
            })
        }
    };
    // Alternate the three, twice, and keep each one's best round. A fresh inbox before each
    // inbox round, so every message is processed, not a duplicate.
    let (mut best_plain, mut best_grouped, mut best_single) = (0f64, 0f64, 0f64);
    let clear = format!("DELETE FROM {inbox_table}");
    for round in 0..2 {
        best_plain = best_plain.max(measure(&js, &stream, &format!("plain{round}"), n, plain()).await?);
        db.execute_unprepared(&clear).await?;
        best_grouped = best_grouped.max(measure(&js, &stream, &format!("grouped{round}"), n, grouped()).await?);
        db.execute_unprepared(&clear).await?;
        best_single = best_single.max(measure(&js, &stream, &format!("single{round}"), n, per_message()).await?);
    }
    println!("messages: {n} (runner: batch 256, concurrency 32; pool 32)");
    println!("plain insert + ack: {best_plain:.0} msg/s");
    println!("Inbox::handler (shared transactions) + ack: {best_grouped:.0} msg/s");
    println!("Inbox::process (a transaction per message) + ack: {best_single:.0} msg/s");
    println!("ratio, Inbox::handler / plain: {:.2}x", best_grouped / best_plain);
    println!("ratio, Inbox::process / plain: {:.2}x", best_single / best_plain);
    for t in [&plain_fx, &inbox_fx, &inbox_table] {
        db.execute_unprepared(&format!("DROP TABLE IF EXISTS {t}")).await?;
    }
    js.delete_stream(&stream).await?;
    Ok(())
}
