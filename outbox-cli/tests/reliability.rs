//! Reliability: real `outbox relay` processes against the real Postgres, NATS JetStream and
//! Redis, with crashes, outages, racing relays, a poison message and bad input. A consumer
//! checks every committed message at the end.
//!
//! CI runs a reduced scale; the documented figures come from
//! `OUTBOX_RELIABILITY_SCALE=full cargo test -p outbox-cli --test reliability -- --nocapture --test-threads 1`.

mod common;

use std::time::{Duration, Instant};

use common::{Db, NatsSink, Proxy, RelayProcess, Verdict, full_scale, host_port, via};
use outbox::{MessageId, NewMessage, OutboxAdmin, OutboxStore};

/// The poison-latency test runs alone (write); the others share the machine (read).
static QUIET: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn row(scenario: &str, v: &Verdict, dup_before_dedup: usize, drain: Duration) {
    println!(
        "| {scenario} | {} | {} | {} | {dup_before_dedup} | {} | {} | {:.1} s |",
        v.committed,
        v.delivered,
        v.lost,
        v.duplicates_seen,
        v.order_violations,
        drain.as_secs_f64()
    );
}

fn nats_env(db: &Db, sink: &NatsSink, nats_url: &str) -> Vec<(&'static str, String)> {
    let mut env = db.env();
    env.extend([
        ("NATS_URL", nats_url.to_owned()),
        ("OUTBOX_BUS", "nats".to_owned()),
        ("OUTBOX_STREAM", sink.stream.clone()),
        ("OUTBOX_PREFIX", sink.prefix.clone()),
        ("OUTBOX_CLAIM_TTL", "2s".to_owned()),
        ("OUTBOX_INTERVAL", "200ms".to_owned()),
        ("OUTBOX_MIN_AGE", "500ms".to_owned()),
        ("OUTBOX_BATCH_SIZE", "200".to_owned()),
        // A killed relay's key partitions move to the others within ~1⅓ of this.
        ("OUTBOX_PARTITION_LEASE_TTL", "2s".to_owned()),
    ]);
    env
}

/// Writes `n` messages over `keys` keys in small transactions, concurrently with the test.
/// A failed transaction (the database went away) is retried until it commits, as a service
/// retrying its requests would; a commit whose answer was lost is detected by looking its
/// first message up.
fn spawn_writer(
    db: &Db,
    n: usize,
    keys: usize,
    pace: Duration,
) -> tokio::task::JoinHandle<std::collections::HashMap<String, Vec<MessageId>>> {
    let store = db.store.clone();
    tokio::spawn(async move {
        let mut by_key: std::collections::HashMap<String, Vec<MessageId>> = std::collections::HashMap::new();
        let mut i = 0;
        while i < n {
            let batch: Vec<_> = (i..(i + 10).min(n))
                .map(|j| NewMessage::new("orders", vec![b'x'; 256]).key(format!("key-{}", j % keys)))
                .collect();
            // A steady offered rate, so crashes and outages happen while writers commit.
            tokio::time::sleep(pace).await;
            let first = batch[0].id;
            loop {
                let attempt = batch.clone();
                let tx = store.transaction(|_txn| Box::pin(async move { Ok::<_, outbox::Error>(((), attempt)) }));
                if tx.await.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                if committed(&store, first).await {
                    break;
                }
            }
            for m in &batch {
                by_key.entry(m.key.clone().unwrap()).or_default().push(m.id);
            }
            i += batch.len();
        }
        by_key
    })
}

/// Whether a message is in the table. (Had it been published and deleted already, the retry
/// enqueues it again and JetStream's dedup drops the repeat.)
async fn committed(store: &outbox::sea_orm::SqlStore, id: MessageId) -> bool {
    use sea_orm::ConnectionTrait;
    let sql = format!("SELECT 1 AS x FROM \"{}\" WHERE id = '{}'", store.config().table, id.as_uuid());
    let db = store.connection();
    matches!(db.query_one_raw(sea_orm::Statement::from_string(db.get_database_backend(), sql)).await, Ok(Some(_)))
}

/// After a database outage: the outbox drains, the relay survived it, and the consumer got
/// every message once and in key order.
async fn check_database_outage(
    db: &Db,
    sink: &NatsSink,
    mut relay: RelayProcess,
    committed: std::collections::HashMap<String, Vec<MessageId>>,
    scenario: &str,
) {
    let drain = drained(db, Duration::from_secs(120)).await;
    assert!(relay.is_running(), "the relay recovered by itself");
    relay.terminate().await;
    let verdict = Verdict::of(&committed, &sink.stored().await);
    let dup_before = sink.publishes().saturating_sub(verdict.delivered);
    row(scenario, &verdict, dup_before, drain);
    assert_eq!(verdict.committed, committed.values().map(Vec::len).sum::<usize>());
    assert_eq!((verdict.lost, verdict.duplicates_seen, verdict.order_violations), (0, 0, 0), "{verdict:?}");
}

async fn drained(db: &Db, timeout: Duration) -> Duration {
    let start = Instant::now();
    assert!(
        common::wait_until(timeout, || async { db.pending().await == 0 }).await,
        "outbox drained within {timeout:?}"
    );
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_chaos_loses_nothing_and_keeps_key_order() {
    let _shared = QUIET.read().await;
    let (Some(db), Some(sink)) = (Db::new().await, NatsSink::new().await) else { return };
    let (n, keys, min_kills) = if full_scale() { (100_000, 1_000, 40) } else { (6_000, 200, 6) };
    let env = nats_env(&db, &sink, &common::nats_url());
    let mut relays = vec![RelayProcess::start(&env, &[]), RelayProcess::start(&env, &[])];
    // Pace the writers so that they are still committing during every kill (~1.5 s apart).
    let pace = Duration::from_secs_f64(min_kills as f64 * 1.5 / (n as f64 / 10.0));
    let writer = spawn_writer(&db, n, keys, pace);
    // Mostly SIGKILL and restart; now and then a relay joins or shuts down, so key partitions
    // move every way they can while the keyed backlog drains.
    let (mut kills, mut joins, mut leaves) = (0, 0, 0);
    for step in 0.. {
        if writer.is_finished() && kills >= min_kills && joins > 0 && leaves > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1000 + fastrand::u64(0..1000))).await;
        match step % 4 {
            1 if relays.len() < 3 => {
                relays.push(RelayProcess::start(&env, &[]));
                joins += 1;
            }
            3 if relays.len() > 1 => {
                relays.swap_remove(fastrand::usize(0..relays.len())).terminate().await;
                leaves += 1;
            }
            _ => {
                let victim = fastrand::usize(0..relays.len());
                relays[victim].signal("-KILL");
                relays[victim] = RelayProcess::start(&env, &[]);
                kills += 1;
            }
        }
    }
    let committed = writer.await.unwrap();
    let drain = drained(&db, Duration::from_secs(120)).await;
    for r in relays {
        r.terminate().await;
    }
    let received = sink.stored().await;
    let verdict = Verdict::of(&committed, &received);
    let dup_before = sink.publishes().saturating_sub(verdict.delivered);
    println!("crash chaos: {kills} SIGKILLs, {joins} relays joined, {leaves} shut down");
    row("crash chaos (1-3 relays, SIGKILL, join or leave every 1-2 s)", &verdict, dup_before, drain);
    assert_eq!(verdict.committed, n);
    assert_eq!((verdict.lost, verdict.duplicates_seen, verdict.order_violations), (0, 0, 0), "{verdict:?}");
    sink.delete().await;
    db.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_racing_relays_publish_each_message_once() {
    let _shared = QUIET.read().await;
    let (Some(db), Some(sink)) = (Db::new().await, NatsSink::new().await) else { return };
    let n = if full_scale() { 100_000 } else { 10_000 };
    let committed = db.write("orders", n, 1_000, 500).await;
    let mut env = nats_env(&db, &sink, &common::nats_url());
    // Normal operation: a claim outlives any publish, so no relay ever takes over another's.
    env.retain(|(k, _)| *k != "OUTBOX_CLAIM_TTL");
    env.push(("OUTBOX_CLAIM_TTL", "30s".to_owned()));
    let start = Instant::now();
    let relays: Vec<_> = (0..4).map(|_| RelayProcess::start(&env, &[])).collect();
    let drain = drained(&db, Duration::from_secs(180)).await.max(start.elapsed());
    for r in relays {
        r.terminate().await;
    }
    let verdict = Verdict::of(&committed, &sink.stored().await);
    let dup_before = sink.publishes().saturating_sub(verdict.delivered);
    row("racing relays (4 processes)", &verdict, dup_before, drain);
    assert_eq!((verdict.lost, verdict.duplicates_seen, verdict.order_violations), (0, 0, 0), "{verdict:?}");
    assert_eq!(dup_before, 0, "racing relays never publish a message twice");
    sink.delete().await;
    db.drop_table().await;
}

/// Reads a counter from the relay's Prometheus endpoint.
async fn metric(addr: &str, name: &str) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { return 0.0 };
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    let mut body = String::new();
    let _ = s.read_to_string(&mut body).await;
    body.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

fn outage() -> Duration {
    if full_scale() { Duration::from_secs(10) } else { Duration::from_secs(3) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_outage_loses_nothing_and_retries_stay_bounded() {
    let _shared = QUIET.read().await;
    let (Some(db), Some(sink)) = (Db::new().await, NatsSink::new().await) else { return };
    let proxy = Proxy::start(host_port(&common::nats_url())).await;
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let env = nats_env(&db, &sink, &via(&common::nats_url(), proxy.port));
    let mut relay = RelayProcess::start(&env, &["--metrics-addr", &metrics_addr]);
    let n = if full_scale() { 20_000 } else { 3_000 };
    let writer = spawn_writer(&db, n, 100, Duration::from_millis(10));
    tokio::time::sleep(Duration::from_millis(500)).await; // let some traffic flow first
    proxy.cut();
    tokio::time::sleep(outage()).await; // the outage itself is the point: it must last
    let stuck = db.pending().await;
    proxy.restore();
    let committed = writer.await.unwrap();
    let drain = drained(&db, Duration::from_secs(120)).await;
    assert!(relay.is_running(), "the relay survived the outage");
    let retried = metric(&metrics_addr, "outbox_retried_total").await;
    relay.terminate().await;
    let verdict = Verdict::of(&committed, &sink.stored().await);
    let dup_before = sink.publishes().saturating_sub(verdict.delivered);
    println!("nats outage: {stuck} pending at restore, {retried} retries");
    row(&format!("NATS outage {:?}", outage()), &verdict, dup_before, drain);
    assert_eq!((verdict.lost, verdict.duplicates_seen, verdict.order_violations), (0, 0, 0), "{verdict:?}");
    // Exponential backoff: each stuck message retries a handful of times, not in a hot loop.
    assert!(retried <= (n as f64) * 12.0, "retries {retried} for {n} messages");
    sink.delete().await;
    db.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_loses_nothing() {
    let _shared = QUIET.read().await;
    let Some(db) = Db::new().await else { return };
    let redis_url = common::redis_url();
    let Ok(mut conn) = outbox::redis::connect(&redis_url).await else {
        outbox::testkit::unreachable_server::<()>("OUTBOX_TEST_REDIS_URL", &redis_url, "unreachable");
        return;
    };
    let proxy = Proxy::start(host_port(&redis_url)).await;
    let prefix = format!("rel:{}:", outbox::testkit::unique_suffix());
    let mut env = db.env();
    env.extend([
        ("REDIS_URL", via(&redis_url, proxy.port)),
        ("OUTBOX_BUS", "redis".to_owned()),
        ("OUTBOX_PREFIX", prefix.clone()),
        ("OUTBOX_CLAIM_TTL", "2s".to_owned()),
        ("OUTBOX_INTERVAL", "200ms".to_owned()),
        ("OUTBOX_MIN_AGE", "500ms".to_owned()),
    ]);
    let mut relay = RelayProcess::start(&env, &[]);
    let n = if full_scale() { 20_000 } else { 3_000 };
    let writer = spawn_writer(&db, n, 100, Duration::from_millis(10));
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.cut();
    tokio::time::sleep(outage()).await;
    proxy.restore();
    let committed = writer.await.unwrap();
    let drain = drained(&db, Duration::from_secs(120)).await;
    assert!(relay.is_running(), "the relay survived the outage");
    relay.terminate().await;
    let stream = format!("{prefix}orders");
    let received = common::redis_stream(&mut conn, &stream).await;
    let verdict = Verdict::of(&committed, &received);
    row(&format!("Redis outage {:?}", outage()), &verdict, verdict.duplicates_seen, drain);
    assert_eq!((verdict.lost, verdict.duplicates_seen, verdict.order_violations), (0, 0, 0), "{verdict:?}");
    let _: i64 = outbox::redis::redis::cmd("DEL").arg(&stream).query_async(&mut conn).await.unwrap();
    db.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_recovers_without_a_restart() {
    let _shared = QUIET.read().await;
    let (Some(db), Some(sink)) = (Db::new().await, NatsSink::new().await) else { return };
    let proxy = Proxy::start(host_port(&db.url)).await;
    let mut env = nats_env(&db, &sink, &common::nats_url());
    env.retain(|(k, _)| *k != "DATABASE_URL");
    env.push(("DATABASE_URL", via(&db.url, proxy.port)));
    let relay = RelayProcess::start(&env, &[]);
    let n = if full_scale() { 20_000 } else { 3_000 };
    let writer = spawn_writer(&db, n, 100, Duration::from_millis(10));
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.cut();
    tokio::time::sleep(outage()).await;
    proxy.restore();
    let committed = writer.await.unwrap();
    check_database_outage(&db, &sink, relay, committed, &format!("Postgres outage {:?}", outage())).await;
    sink.delete().await;
    db.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_restart_recovers_without_a_relay_restart() {
    let _shared = QUIET.read().await;
    let Some(sink) = NatsSink::new().await else { return };
    let server = common::PrivatePostgres::start();
    let db = Db::at(server.url.clone()).await.expect("private postgres");
    let env = nats_env(&db, &sink, &common::nats_url());
    let mut relay = RelayProcess::start(&env, &[]);
    relay.wait_ready().await;
    let n = if full_scale() { 20_000 } else { 3_000 };
    let writer = spawn_writer(&db, n, 100, Duration::from_millis(10));
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.stop();
    tokio::time::sleep(outage()).await;
    server.start_again();
    let committed = writer.await.unwrap();
    assert_eq!(committed.values().map(Vec::len).sum::<usize>(), n);
    let scenario = format!("Postgres restart (stopped {:?})", outage());
    check_database_outage(&db, &sink, relay, committed, &scenario).await;
    sink.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_and_replay_after_the_fix() {
    let _shared = QUIET.read().await;
    // The stream takes `orders` only, so another topic has no stream until the fix.
    let (Some(db), Some(sink)) = (Db::new().await, NatsSink::taking(&["orders"]).await) else { return };
    let n = if full_scale() { 10_000 } else { 2_000 };
    let max = sink.client.server_info().max_payload;
    let oversized = NewMessage::new("orders", vec![b'x'; max + 1]).key("poison-size");
    // A topic whose subject no stream takes yet: fixed later by adding a stream.
    let orphan_topic = format!("orphan{}", outbox::testkit::unique_suffix());
    let orphan = NewMessage::new(orphan_topic.clone(), "later").key("poison-subject");
    let (oversized_id, orphan_id) = (oversized.id, orphan.id);
    db.store.enqueue(vec![oversized, orphan]).await.unwrap();
    let committed = db.write("orders", n, 100, 500).await;
    let mut env = nats_env(&db, &sink, &common::nats_url());
    env.retain(|(k, _)| *k != "OUTBOX_STREAM");
    env.push(("OUTBOX_STREAM", String::new())); // the test manages the streams
    let relay = RelayProcess::start(&env, &["--max-attempts", "3"]);
    let ok = common::wait_until(Duration::from_secs(120), || async {
        let s = db.store.stats().await.unwrap();
        s.pending == 0 && s.dead == 2
    })
    .await;
    assert!(ok, "everything else published, the two poison messages dead");
    let dead = db.store.dead_letters(&Default::default()).await.unwrap();
    let reason = |id| dead.iter().find(|d| d.message.id == id).and_then(|d| d.message.last_error.clone()).unwrap();
    assert!(reason(oversized_id).contains("payload"), "{}", reason(oversized_id));
    assert!(reason(orphan_id).contains("no JetStream stream takes subject"), "{}", reason(orphan_id));
    let verdict = Verdict::of(&committed, &sink.stored().await);
    assert_eq!((verdict.lost, verdict.order_violations), (0, 0), "{verdict:?}");

    // Fix the cause (a stream for the orphan subject), then replay from the CLI.
    let js = outbox::nats::async_nats::jetstream::new(sink.client.clone());
    let fix = format!("FIX_{}", outbox::testkit::unique_suffix());
    outbox::nats::ensure_stream(&js, &outbox::nats::StreamSpec::new(&fix, [format!("{}{orphan_topic}", sink.prefix)]))
        .await
        .unwrap();
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = common::run(&["dead", "replay", &orphan_id.to_string()], &env_refs);
    assert!(common::stdout(&out).contains("replayed 1"), "{}", common::stderr(&out));
    assert!(
        common::wait_until(Duration::from_secs(30), || async {
            let s = db.store.stats().await.unwrap();
            s.dead == 1 && s.pending == 0
        })
        .await,
        "the replayed message is published"
    );
    let mut fixed = js.get_stream(&fix).await.unwrap();
    assert_eq!(fixed.info().await.unwrap().state.messages, 1);
    relay.terminate().await;
    let _ = js.delete_stream(&fix).await;
    row("poison (oversized + unroutable among others)", &verdict, 0, Duration::ZERO);
    sink.delete().await;
    db.drop_table().await;
}

/// The p99 of `latencies`.
fn p99(mut latencies: Vec<Duration>) -> Duration {
    latencies.sort();
    latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_does_not_delay_other_keys() {
    let _alone = QUIET.write().await;
    let (Some(db), Some(sink)) = (Db::new().await, NatsSink::new().await) else { return };
    let max = sink.client.server_info().max_payload;
    let env = nats_env(&db, &sink, &common::nats_url());
    let mut relay = RelayProcess::start(&env, &["--max-attempts", "3"]);
    relay.wait_ready().await;
    // One poison message among all the others, as in a real run. Windows of the run with the
    // poison (the odd ones, the first starting with it) alternate with windows of a run
    // without it, so machine noise hits both alike.
    let (windows, per_window) = if full_scale() { (20, 500) } else { (12, 300) };
    let mut commit_times: Vec<(bool, MessageId, Instant)> = Vec::new();
    let mut poison = Vec::new();
    for w in 0..windows {
        let poisoned = w % 2 == 1;
        if w == 1 {
            let m = NewMessage::new("orders", vec![b'x'; max + 1]).key(format!("poison-{w}"));
            poison.push(m.id);
            db.store.transaction(|_t| Box::pin(async move { Ok::<_, outbox::Error>(((), vec![m])) })).await.unwrap();
        }
        for i in (0..per_window).step_by(10) {
            let batch: Vec<_> = (i..i + 10)
                .map(|j| NewMessage::new("orders", vec![b'x'; 256]).key(format!("key-{}", j % 50)))
                .collect();
            let ids: Vec<MessageId> = batch.iter().map(|m| m.id).collect();
            db.store.transaction(|_t| Box::pin(async move { Ok::<_, outbox::Error>(((), batch)) })).await.unwrap();
            let at = Instant::now();
            commit_times.extend(ids.into_iter().map(|id| (poisoned, id, at)));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let ok = common::wait_until(Duration::from_secs(60), || async {
        let s = db.store.stats().await.unwrap();
        s.pending == 0 && s.dead == poison.len() as u64
    })
    .await;
    assert!(ok, "every poison message dead-lettered, everything else published");
    relay.terminate().await;
    let dead = db.store.dead_letters(&Default::default()).await.unwrap();
    assert!(dead.iter().all(|d| poison.contains(&d.message.id) && d.message.last_error.is_some()));

    let seen = sink.first_seen();
    let latency = |poisoned: bool| -> Vec<Duration> {
        commit_times
            .iter()
            .filter(|(p, _, _)| *p == poisoned)
            .map(|(_, id, at)| seen.get(id).expect("every message reached the broker").saturating_duration_since(*at))
            .collect()
    };
    let (clean, poisoned) = (p99(latency(false)), p99(latency(true)));
    let ratio = poisoned.as_secs_f64() / clean.as_secs_f64().max(1e-6);
    println!(
        "poison: other keys' commit → broker p99 {:.2} ms with poison vs {:.2} ms without ({ratio:.2}×)",
        poisoned.as_secs_f64() * 1e3,
        clean.as_secs_f64() * 1e3
    );
    assert!(ratio <= 2.0, "other keys' p99 with poison {poisoned:?} vs {clean:?} without");
    sink.delete().await;
    db.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_config_get_clear_errors_and_lose_nothing() {
    let _shared = QUIET.read().await;
    let Some(db) = Db::new().await else { return };
    let env = db.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut e = env.clone();
        e.extend_from_slice(extra);
        e
    };
    /// Name, arguments, environment, expected exit code, text the error must contain.
    type Case<'a> = (&'a str, Vec<&'a str>, Vec<(&'a str, &'a str)>, i32, &'a str);
    let cases: Vec<Case> = vec![
        ("batch size 0", vec!["relay", "--batch-size", "0"], with(&[]), 2, "batch"),
        ("claim ttl 0", vec!["relay", "--claim-ttl", "0s"], with(&[]), 2, "claim_ttl"),
        ("interval 0", vec!["relay", "--interval", "0s"], with(&[]), 2, "fallback.interval"),
        ("max attempts 0", vec!["relay", "--max-attempts", "0"], with(&[]), 2, "max_attempts"),
        ("negative duration", vec!["relay", "--min-age=-1s"], with(&[]), 2, "-1s"),
        (
            "unreachable database",
            vec!["status"],
            vec![("DATABASE_URL", "postgres://postgres@127.0.0.1:1/test")],
            1,
            "127.0.0.1:1",
        ),
        (
            "unreachable broker",
            vec!["relay", "--bus", "nats"],
            with(&[("NATS_URL", "nats://127.0.0.1:1")]),
            1,
            "127.0.0.1:1",
        ),
        ("malformed URL", vec!["relay"], with(&[("NATS_URL", "nats//broken")]), 2, "not a URL"),
        ("migration not run", vec!["--table", "no_such_outbox", "status"], with(&[]), 1, "migration"),
    ];
    for (name, args, env, code, needle) in &cases {
        let out = common::run(args, env);
        assert_eq!(out.status.code(), Some(*code), "{name}: {}", common::stderr(&out));
        assert!(common::stderr(&out).contains(needle), "{name}: {}", common::stderr(&out));
        assert!(!common::stderr(&out).contains("panicked"), "{name}");
    }
    // Message-level bad input: rejected at enqueue, and the transaction stays usable.
    let good = NewMessage::new("orders", "kept");
    let good_id = good.id;
    let result = db
        .store
        .transaction(|txn| {
            let store = db.store.clone();
            Box::pin(async move {
                let empty = store.enqueue_in(txn, vec![NewMessage::new("", "x")]).await.unwrap_err();
                assert!(empty.to_string().contains("topic is empty"), "{empty}");
                let long = store.enqueue_in(txn, vec![NewMessage::new("t".repeat(300), "x")]).await.unwrap_err();
                assert!(long.to_string().contains("limit is 255"), "{long}");
                Ok::<_, outbox::Error>(((), vec![good]))
            })
        })
        .await;
    result.unwrap();
    assert_eq!(db.store.stats().await.unwrap().pending, 1, "the good message survived the bad ones");
    let lease = outbox::Lease::new(Duration::from_secs(5));
    assert_eq!(db.store.claim_ids(&[good_id], &lease).await.unwrap().len(), 1);
    println!("bad input: {} configuration cases + 2 message cases, each a clear error", cases.len());
    // Forbidden subject characters and oversized payloads: the poison scenario and outbox-nats.
    db.drop_table().await;
}
