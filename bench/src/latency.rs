//! Commit → broker ack and commit → consumer receipt, at a fixed offered rate, one message per
//! transaction, in HDR histograms.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use hdrhistogram::Histogram;
use outbox::nats::async_nats;
use outbox::{Bus, ChannelNotifier, FallbackConfig, MessageId, NewMessage, OutboxMessage, PublishOutcome, Relay};
use tokio::io::AsyncReadExt;

use crate::env::{BoxError, Env, Keys, Table, dyn_bus, id_of};
use crate::probe::{ProbeStore, Stamps, lock};
use crate::report::Report;

/// A [`Bus`] decorator that records when the broker acknowledged each message.
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
        let mut acked = lock(&self.acked);
        for (m, o) in batch.iter().zip(&outcomes) {
            if o.is_delivered() {
                acked.entry(m.id).or_insert(now);
            }
        }
        outcomes
    }
}

/// A JetStream consumer (ordered, pull) on `stream` that records when each message arrived,
/// matched by its `Outbox-Message-Id` header.
async fn consume(env: &Env, stream: &str) -> Stamps {
    let received: Stamps = Arc::default();
    let js = async_nats::jetstream::new(env.nats.clone());
    let consumer = js
        .get_stream(stream)
        .await
        .expect("stream")
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let r = received.clone();
    tokio::spawn(async move {
        while let Some(Ok(m)) = messages.next().await {
            let now = Instant::now();
            let id = m.headers.as_ref().and_then(|h| h.get("Outbox-Message-Id")).and_then(|v| id_of(v.as_str()));
            if let Some(id) = id {
                lock(&r).entry(id).or_insert(now);
            }
        }
    });
    received
}

/// Commits one message per transaction (`SqlStore::transaction`: enqueue, commit, notify) at
/// `rate`/s for `secs` from 4 writers; returns each message's commit instant.
async fn write(table: &Table, rate: u64, secs: u64) -> HashMap<MessageId, Instant> {
    const WRITERS: u64 = 4;
    let period = Duration::from_secs_f64(WRITERS as f64 / rate as f64);
    let per_writer = rate * secs / WRITERS;
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = table.store.clone();
            tokio::spawn(async move {
                let mut stamps = Vec::with_capacity(per_writer as usize);
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                for i in 0..per_writer {
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

/// Microsecond latencies from commit to `seen`, and how many were never seen.
fn histogram(committed: &HashMap<MessageId, Instant>, seen: &Stamps) -> (Histogram<u64>, usize) {
    let seen = lock(seen);
    let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram");
    let mut missing = 0;
    for (id, at) in committed {
        match seen.get(id) {
            Some(t) => h.saturating_record(t.saturating_duration_since(*at).as_micros().max(1) as u64),
            None => missing += 1,
        }
    }
    (h, missing)
}

/// Waits until every committed message was seen, up to 30 s.
async fn wait_all(committed: &HashMap<MessageId, Instant>, seen: &Stamps) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        {
            let seen = lock(seen);
            if committed.keys().all(|id| seen.contains_key(id)) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Same-run floor of the listener path: the round trips it cannot avoid, back to back on an
/// idle relay: a one-row claim (`UPDATE … RETURNING`, autocommit without waiting for the WAL
/// flush, as the store's lease claims commit) and one JetStream publish awaiting its ack.
/// Returns the histogram of their sum (µs).
async fn floor(env: &Env, n: usize) -> Histogram<u64> {
    let table = env.table(false).await;
    table.prefill(n, "floor", Keys::None).await;
    let target = env.jetstream().await;
    let js = async_nats::jetstream::new(env.nats.clone());
    let claim = format!(
        "UPDATE \"{}\" SET claimed_until = $1, claim_token = $2 WHERE seq = $3 \
         AND (SELECT set_config('synchronous_commit', 'off', true)) IS NOT NULL RETURNING id, topic, payload, headers",
        table.name
    );
    let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram");
    for seq in 1..=n as i64 {
        let start = Instant::now();
        let values: [sea_orm::Value; 3] = [i64::MAX.into(), uuid::Uuid::now_v7().into(), seq.into()];
        let stmt = sea_orm::Statement::from_sql_and_values(sea_orm::DbBackend::Postgres, claim.clone(), values);
        let row = sea_orm::ConnectionTrait::query_one_raw(&table.db, stmt).await.expect("claim").expect("row");
        let payload: Vec<u8> = row.try_get("", "payload").expect("payload");
        let msg = async_nats::jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .message_id(format!("floor-{seq}"));
        js.send_publish(format!("{}floor", target.prefix), msg).await.expect("send").await.expect("ack");
        h.saturating_record(start.elapsed().as_micros().max(1) as u64);
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    table.drop().await;
    env.drop_stream(&target.stream).await;
    h
}

/// Runs the three paths: in-process listener, fallback only, and a relay in another process
/// woken by Postgres `LISTEN`/`NOTIFY`.
pub(crate) async fn run(env: &Env, report: &mut Report, quick: bool) {
    let (rate, secs) = if quick { (2_000, 5) } else { (2_000, 20) };
    println!("# latency: {rate} commits/s for {secs} s, one 256-byte message per transaction, 4 writers");
    env.checkpoint().await;
    let cpu0 = env.cpu().await;
    let base = floor(env, if quick { 500 } else { 2_000 }).await;
    let usage = cpu0.until(&env.cpu().await);
    let floor_p50 = base.value_at_quantile(0.5).max(1) as f64;
    report.latency(
        "baseline: one-row claim UPDATE (autocommit, asynchronous commit) + one JetStream publish→ack, back to back, no load",
        &base,
        0,
        None,
        Some(usage.load()),
    );
    let vs_floor = |h: &Histogram<u64>, usage: &crate::cpu::Usage, checkpoints: i64| {
        Some(format!(
            "p50 {:.2}× the baseline; {}; {checkpoints} checkpoint(s) during the run",
            h.value_at_quantile(0.5) as f64 / floor_p50,
            usage.load()
        ))
    };
    for listener in [true, false] {
        let table = env.table(false).await;
        let target = env.jetstream().await;
        let received = consume(env, &target.stream).await;
        let acked: Stamps = Arc::default();
        let timing = Arc::new(TimingBus { inner: dyn_bus(target.bus.clone()), acked: acked.clone() });
        let notifier = Arc::new(ChannelNotifier::new(4096));
        let writer = Table {
            name: table.name.clone(),
            store: table.store.clone().with_notifier(notifier.clone()),
            db: table.db.clone(),
        };
        let probe = Arc::new(ProbeStore::new(table.store.clone()));
        let builder = Relay::builder(probe.clone(), timing).notifier(notifier);
        let (relay, path, target_us) = if listener {
            // Default fallback (1 s, min_age 2 s): the listener does the work.
            (builder.build(), "listener (in-process ChannelNotifier)", Some((1_000, 5_000)))
        } else {
            let fallback = FallbackConfig::default().min_age(Duration::ZERO);
            (builder.without_listener().fallback(fallback).build(), "fallback only (interval 1 s, min_age 0)", None)
        };
        let relay = relay.expect("relay").spawn();
        env.checkpoint().await;
        let (cpu0, cp0) = (env.cpu().await, env.checkpoints().await);
        let committed = write(&writer, rate, secs).await;
        wait_all(&committed, &received).await;
        let usage = cpu0.until(&env.cpu().await);
        let checkpoints = env.checkpoints().await - cp0;
        relay.shutdown().await.expect("shutdown");
        if listener {
            // Messages the fallback picked up instead never pass claim_ids: left out here.
            let (h, _) = histogram(&committed, &probe.asked);
            report.latency(&format!("{path}: commit → claim_ids called"), &h, 0, None, None);
            let (h, _) = histogram(&committed, &probe.claimed);
            report.latency(&format!("{path}: commit → claimed (claim_ids returned)"), &h, 0, None, None);
        }
        let (h, missing) = histogram(&committed, &acked);
        let note = if listener {
            vs_floor(&h, &usage, checkpoints)
        } else {
            Some(format!("{}; {checkpoints} checkpoint(s) during the run", usage.load()))
        };
        report.latency(&format!("{path}: commit → JetStream ack"), &h, missing, target_us, note);
        let (h, missing) = histogram(&committed, &received);
        report.latency(&format!("{path}: commit → consumer receipt"), &h, missing, None, None);
        table.drop().await;
        env.drop_stream(&target.stream).await;
    }
    cross_process(env, report, rate, secs, &vs_floor).await;
}

/// Says how a latency histogram compares with the floor measured beside it.
type FloorNote<'a> = dyn Fn(&Histogram<u64>, &crate::cpu::Usage, i64) -> Option<String> + Send + Sync + 'a;

/// A relay in another process (this binary, `relay` subcommand), woken by `LISTEN`/`NOTIFY`.
async fn cross_process(env: &Env, report: &mut Report, rate: u64, secs: u64, vs_floor: &FloorNote<'_>) {
    let table = env.table(true).await;
    let target = env.jetstream().await;
    let received = consume(env, &target.stream).await;
    let mut child = tokio::process::Command::new(std::env::current_exe().expect("exe"))
        .args(["relay", "--table", &table.name, "--prefix", &target.prefix])
        .stdin(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("relay process");
    // The child is ready once a probe message has made it through.
    let probe = NewMessage::new("probe", "x");
    let probe_id = probe.id;
    let deadline = Instant::now() + Duration::from_secs(30);
    table
        .store
        .transaction(|_t| Box::pin(async move { Ok::<_, outbox::Error>(((), vec![probe])) }))
        .await
        .expect("probe");
    while !lock(&received).contains_key(&probe_id) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.checkpoint().await;
    let (cpu0, cp0) = (env.cpu().await, env.checkpoints().await);
    let committed = write(&table, rate, secs).await;
    wait_all(&committed, &received).await;
    let usage = cpu0.until(&env.cpu().await);
    let checkpoints = env.checkpoints().await - cp0;
    drop(child.stdin.take()); // EOF: the child shuts its relay down.
    if tokio::time::timeout(Duration::from_secs(15), child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
    let (h, missing) = histogram(&committed, &received);
    report.latency(
        "listener in another process, woken by Postgres LISTEN/NOTIFY: commit → consumer receipt",
        &h,
        missing,
        None,
        vs_floor(&h, &usage, checkpoints),
    );
    table.drop().await;
    env.drop_stream(&target.stream).await;
}

/// The child side of the cross-process scenario: a default relay on `table` with a
/// [`PgNotifier`](outbox::sea_orm::PgNotifier), publishing under `prefix`, until stdin closes.
pub(crate) async fn relay_process(table: &str, prefix: &str) -> Result<(), BoxError> {
    let env = Env::connect().await?;
    let config = outbox::sea_orm::SqlStoreConfig::default().table(table);
    let store = outbox::sea_orm::SqlStore::new(env.db.clone(), config)?;
    let notifier = outbox::sea_orm::PgNotifier::new(&env.db, table)?;
    let bus = outbox::nats::JetStreamBus::builder(env.nats.clone()).subject_prefix(prefix).build()?;
    let relay = Relay::builder(Arc::new(store), Arc::new(bus)).notifier(Arc::new(notifier)).build()?.spawn();
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while stdin.read(&mut buf).await.unwrap_or(0) > 0 {}
    relay.shutdown().await?;
    Ok(())
}
