//! Commit → broker ack and commit → consumer receipt, at a fixed offered rate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use hdrhistogram::Histogram;
use outbox::{Bus, ChannelNotifier, FallbackConfig, MessageId, NewMessage, OutboxMessage, PublishOutcome, Relay};

use crate::env::{Env, Table, id_of};
use crate::report::Report;

type Stamps = Arc<Mutex<HashMap<MessageId, Instant>>>;

/// Records when the broker acknowledged each message.
#[derive(Debug)]
struct TimingBus {
    inner: Arc<dyn Bus>,
    acked: Stamps,
}

#[async_trait]
impl Bus for TimingBus {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<PublishOutcome> {
        let outcomes = self.inner.publish(batch).await;
        let now = Instant::now();
        let mut acked = self.acked.lock().unwrap_or_else(|e| e.into_inner());
        for (m, o) in batch.iter().zip(&outcomes) {
            if o.is_delivered() {
                acked.entry(m.id).or_insert(now);
            }
        }
        outcomes
    }
}

/// Records when a core-NATS subscriber (a consumer) received each message.
async fn tap(env: &Env, prefix: &str) -> Stamps {
    let received: Stamps = Arc::default();
    let mut sub = env.nats.subscribe(format!("{prefix}>")).await.expect("subscribe");
    env.nats.flush().await.expect("flush");
    let r = received.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let now = Instant::now();
            if let Some(id) =
                m.headers.as_ref().and_then(|h| h.get("Outbox-Message-Id")).and_then(|v| id_of(v.as_str()))
            {
                r.lock().unwrap_or_else(|e| e.into_inner()).entry(id).or_insert(now);
            }
        }
    });
    received
}

/// Commits one message per transaction at `rate`/s for `secs` from 4 writers; returns commit times.
async fn write(table: &Table, rate: u64, secs: u64) -> HashMap<MessageId, Instant> {
    let per_writer = Duration::from_secs_f64(4.0 / rate as f64);
    let total = rate * secs;
    let tasks: Vec<_> = (0..4)
        .map(|w| {
            let store = table.store.clone();
            tokio::spawn(async move {
                let mut stamps = Vec::new();
                let mut tick = tokio::time::interval(per_writer);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                for i in 0..total / 4 {
                    tick.tick().await;
                    let m = NewMessage::new("latency", vec![b'x'; 256]).key(format!("k{w}-{}", i % 50));
                    let id = m.id;
                    store
                        .transaction(|_txn| Box::pin(async move { Ok::<_, outbox::Error>(((), vec![m])) }))
                        .await
                        .expect("commit");
                    stamps.push((id, Instant::now()));
                }
                stamps
            })
        })
        .collect();
    let mut committed = HashMap::new();
    for t in tasks {
        committed.extend(t.await.expect("writer"));
    }
    committed
}

fn histogram(committed: &HashMap<MessageId, Instant>, seen: &Stamps) -> Histogram<u64> {
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    let mut h = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("histogram");
    for (id, at) in committed {
        if let Some(t) = seen.get(id) {
            let _ = h.record(t.saturating_duration_since(*at).as_micros().max(1) as u64);
        }
    }
    h
}

async fn wait_all(committed: &HashMap<MessageId, Instant>, seen: &Stamps) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let got = seen.lock().unwrap_or_else(|e| e.into_inner()).len();
        if got >= committed.len() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn run(env: &Env, report: &mut Report, quick: bool) {
    let (rate, secs) = if quick { (2_000, 5) } else { (2_000, 20) };
    for listener in [true, false] {
        let table = env.table(false).await;
        let (bus, stream, prefix) = env.jetstream().await;
        let received = tap(env, &prefix).await;
        let acked: Stamps = Arc::default();
        let timing = Arc::new(TimingBus { inner: bus, acked: acked.clone() });
        let notifier = Arc::new(ChannelNotifier::new(4096));
        let writer_store = table.store.clone().with_notifier(notifier.clone());
        let writer_table = Table { name: table.name.clone(), store: writer_store, db: table.db.clone() };
        let fallback = FallbackConfig::default().min_age(Duration::ZERO);
        let builder = Relay::builder(Arc::new(table.store.clone()), timing).notifier(notifier).fallback(fallback);
        let relay = if listener { builder } else { builder.without_listener() }.build().expect("relay").spawn();
        let committed = write(&writer_table, rate, secs).await;
        wait_all(&committed, &received).await;
        relay.shutdown().await.expect("shutdown");
        let path = if listener { "listener (in-process notice)" } else { "fallback only (interval 1 s, min_age 0)" };
        let targets = listener.then_some((1_000, 5_000));
        report.latency(
            &format!("{path}: commit → broker ack, {rate}/s for {secs} s"),
            &histogram(&committed, &acked),
            targets,
        );
        report.latency(&format!("{path}: commit → consumer receipt"), &histogram(&committed, &received), None);
        table.drop().await;
        env.drop_stream(&stream).await;
    }

    // A relay in another process, woken by Postgres LISTEN/NOTIFY.
    let table = env.table(true).await;
    let (bus, stream, prefix) = env.jetstream().await;
    drop(bus);
    let received = tap(env, &prefix).await;
    let mut child = tokio::process::Command::new(std::env::current_exe().expect("exe"))
        .args(["relay", "--table", &table.name, "--prefix", &prefix])
        .kill_on_drop(true)
        .spawn()
        .expect("relay process");
    // Wait until the child listens: a probe message must arrive before measuring.
    let probe = NewMessage::new("probe", "x");
    let probe_id = probe.id;
    table
        .store
        .transaction(|_t| Box::pin(async move { Ok::<_, outbox::Error>(((), vec![probe])) }))
        .await
        .expect("probe");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !received.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&probe_id) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let committed = write(&table, rate, secs).await;
    wait_all(&committed, &received).await;
    let _ = child.kill().await;
    report.latency(
        &format!(
            "listener in another process (Postgres LISTEN/NOTIFY): commit → consumer receipt, {rate}/s for {secs} s"
        ),
        &histogram(&committed, &received),
        None,
    );
    table.drop().await;
    env.drop_stream(&stream).await;
}

/// The child side of the cross-process scenario: a relay woken by LISTEN/NOTIFY.
pub(crate) async fn relay_process(table: &str, prefix: &str) -> Result<(), Box<dyn std::error::Error>> {
    let env = Env::connect().await?;
    let config = outbox::sea_orm::SqlStoreConfig::default().table(table);
    let store = outbox::sea_orm::SqlStore::new(env.db.clone(), config)?;
    let notifier = outbox::sea_orm::PgNotifier::new(&env.db, table)?;
    let bus = outbox::nats::JetStreamBus::builder(env.nats.clone()).subject_prefix(prefix).build()?;
    let relay = Relay::builder(Arc::new(store), Arc::new(bus)).notifier(Arc::new(notifier)).build()?.spawn();
    tokio::signal::ctrl_c().await?;
    relay.shutdown().await?;
    Ok(())
}
