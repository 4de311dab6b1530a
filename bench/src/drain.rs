//! Backlog drain: a pre-filled table emptied by 1–4 relays, beside the raw rate of each part
//! (broker publish, SQL claim+delete, the store's claim+complete) and a one-message-per-
//! transaction relay, all measured in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use outbox::nats::async_nats;
use outbox::sea_orm::{DEFAULT_KEY_PARTITIONS, SqlStore};
use outbox::{Bus, FallbackConfig, OutboxStore, Relay};
use sea_orm::{ConnectionTrait, TransactionTrait};

use crate::cpu::Usage;
use crate::env::{Env, Keys, dyn_bus, stmt};
use crate::report::{Check, Goal, Report, Row, num, rate};

/// Sizes of one drain run.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    /// Messages per drain at batch 100 and 1,000, and per baseline.
    pub(crate) n: usize,
    /// Messages per drain at batch 1 (it is ~50× slower).
    pub(crate) n_batch1: usize,
    /// Messages for the one-message-per-transaction relay.
    pub(crate) n_seed: usize,
    /// Alternating rounds of the store-vs-raw-SQL comparison, and rows per round.
    pub(crate) store_rounds: usize,
    pub(crate) store_round_rows: usize,
    /// Relay instances to try.
    pub(crate) relays: Vec<usize>,
    /// Give up on a drain after this long and report the partial rate.
    pub(crate) deadline: Duration,
    /// Messages of the keyed drains, and the key counts to try.
    pub(crate) n_keyed: usize,
    pub(crate) key_counts: Vec<usize>,
    /// Relay instances of the keyed drains.
    pub(crate) keyed_relays: Vec<usize>,
    /// Rounds of the keyed drains, interleaved; each scenario keeps its best round, so that a
    /// slow spell of a shared machine does not land on one scenario only.
    pub(crate) keyed_rounds: usize,
    /// Sweep concurrencies to try besides the default 2 (JetStream, batch 1,000, one relay).
    pub(crate) concurrency: Vec<usize>,
}

impl Plan {
    /// The default plan: 200,000 messages (20,000 with `quick`), or `n` when given.
    pub(crate) fn new(quick: bool, n: Option<usize>) -> Self {
        if quick {
            let n = n.unwrap_or(20_000);
            Self {
                n,
                n_batch1: (n / 20).max(100),
                n_seed: (n / 20).max(100),
                store_rounds: 3,
                store_round_rows: n / 2,
                relays: vec![1, 4],
                deadline: Duration::from_secs(20),
                n_keyed: (n / 2).max(100),
                key_counts: vec![1_000],
                concurrency: vec![],
                keyed_relays: vec![1],
                keyed_rounds: 1,
            }
        } else {
            let n = n.unwrap_or(200_000);
            Self {
                n,
                n_batch1: (n / 40).max(100),
                n_seed: (n / 40).max(100),
                store_rounds: 8,
                store_round_rows: n / 4,
                relays: vec![1, 2, 3, 4],
                deadline: Duration::from_secs(90),
                n_keyed: (n / 4).max(100),
                key_counts: vec![10_000, 1_000],
                concurrency: vec![1, 4],
                keyed_relays: vec![1, 4],
                keyed_rounds: 3,
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Broker {
    JetStream,
    Redis,
    Kafka,
}

impl Broker {
    fn name(self) -> &'static str {
        match self {
            Self::JetStream => "JetStream",
            Self::Redis => "Redis Streams",
            Self::Kafka => "Kafka",
        }
    }

    /// The ≥ msg/s target of a Postgres → broker drain.
    fn target(self) -> f64 {
        match self {
            Self::JetStream => 50_000.0,
            Self::Redis => 60_000.0,
            // Issue #18 sets no Kafka target; its rows are judged against their floor only.
            Self::Kafka => f64::NAN,
        }
    }
}

/// A fresh destination for one drain; counts what arrived and removes itself.
pub(crate) enum Sink {
    JetStream(String),
    Redis(String),
    /// The topic prefix; the drain's topic is `<prefix>drain`.
    Kafka(String),
}

impl Sink {
    pub(crate) async fn new(env: &Env, broker: Broker) -> (Arc<dyn Bus>, Self) {
        match broker {
            Broker::JetStream => {
                let t = env.jetstream().await;
                (dyn_bus(t.bus), Self::JetStream(t.stream))
            }
            Broker::Redis => {
                let (bus, prefix) = env.redis_bus().await;
                (dyn_bus(bus), Self::Redis(prefix))
            }
            Broker::Kafka => {
                let (bus, prefix) = crate::kafka::bus().await;
                crate::kafka::create_topic(&format!("{prefix}drain")).await;
                (dyn_bus(bus), Self::Kafka(prefix))
            }
        }
    }

    pub(crate) async fn count(&self, env: &Env, topic: &str) -> u64 {
        match self {
            Self::JetStream(stream) => env.stream_len(stream).await,
            Self::Redis(prefix) => env.xlen(&format!("{prefix}{topic}")).await,
            Self::Kafka(prefix) => crate::kafka::topic_len(&format!("{prefix}{topic}")).await,
        }
    }

    pub(crate) async fn remove(self, env: &Env) {
        match self {
            Self::JetStream(s) => env.drop_stream(&s).await,
            Self::Redis(p) => env.drop_redis_prefix(&p).await,
            Self::Kafka(p) => crate::kafka::delete_topic(&format!("{p}drain")).await,
        }
    }
}

/// One relay drain's settings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Drain {
    pub(crate) broker: Broker,
    pub(crate) n: usize,
    pub(crate) keys: Keys,
    pub(crate) batch: usize,
    pub(crate) relays: usize,
    pub(crate) concurrency: usize,
    /// The stores' `key_partitions` (0: off).
    pub(crate) partitions: u16,
}

/// What a drain achieved.
pub(crate) struct Drained {
    pub(crate) rate: f64,
    /// Messages published (all `n` unless the deadline hit).
    done: usize,
    timed_out: bool,
    cpu: Usage,
}

/// Pre-fills a table, then lets `relays` relays (fallback only, min_age 0, 20 ms interval)
/// drain it into a fresh stream; stops at `deadline`.
pub(crate) async fn relay_drain(env: &Env, d: Drain, deadline: Duration) -> Drained {
    let mut table = env.table(false).await;
    if d.partitions != table.store.config().key_partitions {
        let config = table.store.config().clone().key_partitions(d.partitions);
        table.store = SqlStore::new(table.db.clone(), config).expect("store");
    }
    // With key partitions, the relays take their shares first and the backlog commits after
    // (one statement): the drain times relays that have settled, as in a running service,
    // not their start-up (a relay holding more than its share gives it up at its next
    // renewal, a third of the lease TTL later, longer than a drain).
    let settle_first = d.partitions > 0;
    if !settle_first {
        table.prefill(d.n, "drain", d.keys).await;
    }
    let (bus, sink) = Sink::new(env, d.broker).await;
    let fallback = FallbackConfig::default()
        .interval(Duration::from_millis(20))
        .min_age(Duration::ZERO)
        .batch_size(d.batch)
        .concurrency(d.concurrency);
    // A store per relay, as in separate processes: each holds its own share of the key
    // partitions.
    let phases = Arc::new(crate::phases::Phases::default());
    let probing = env.phases;
    let mut owners = Vec::new();
    let handles: Vec<_> = (0..d.relays)
        .map(|_| {
            let store = SqlStore::new(table.db.clone(), table.store.config().clone()).expect("store");
            owners.extend(store.partition_owner());
            let (store, bus): (Arc<dyn OutboxStore>, Arc<dyn Bus>) = if probing {
                (
                    Arc::new(crate::phases::TimedStore { inner: store, phases: phases.clone() }),
                    Arc::new(crate::phases::TimedBus { inner: bus.clone(), phases: phases.clone() }),
                )
            } else {
                (Arc::new(store), bus.clone())
            };
            Relay::builder(store, bus).without_listener().fallback(fallback.clone()).build().expect("relay").spawn()
        })
        .collect();
    if settle_first {
        let share = usize::from(d.partitions) / d.relays;
        crate::keys::until(env, &table.name, |o| {
            o.len() == usize::from(d.partitions)
                && owners.iter().all(|id| crate::keys::held_by(o, *id) >= share)
                && o.values().all(|holder| holder.is_some_and(|h| owners.contains(&h)))
        })
        .await;
        phases.reset();
        table.prefill(d.n, "drain", d.keys).await;
    }
    let cpu0 = env.cpu().await;
    let start = Instant::now();
    let drained = table.wait_drained(deadline).await;
    let elapsed = start.elapsed();
    let cpu = cpu0.until(&env.cpu().await);
    if probing {
        phases.print(&format!("{:?} keys, {} relay(s), {} partitions", d.keys, d.relays, d.partitions), elapsed);
    }
    for h in handles {
        let _ = h.shutdown().await;
    }
    let done = if drained {
        let stats = table.store.stats().await.expect("stats");
        assert_eq!(stats.pending, 0, "store stats after the drain");
        d.n
    } else {
        d.n - table.pending().await
    };
    let arrived = sink.count(env, "drain").await;
    if drained && arrived != d.n as u64 {
        eprintln!("warning: {d:?} drained {} rows but the broker holds {arrived} messages", d.n);
    }
    sink.remove(env).await;
    table.drop().await;
    Drained { rate: rate(done, elapsed), done, timed_out: !drained, cpu }
}

/// Raw JetStream: publishes with `Nats-Msg-Id` dedup ids, at most 256 acks outstanding (the
/// bus's default window).
async fn raw_jetstream(env: &Env, n: usize) -> (f64, Usage) {
    let t = env.jetstream().await;
    let js = async_nats::jetstream::new(env.nats.clone());
    let payload = bytes::Bytes::from(vec![b'x'; 256]);
    let subject = format!("{}raw", t.prefix);
    let cpu0 = env.cpu().await;
    let start = Instant::now();
    let acks = futures::stream::iter(0..n)
        .map(|i| {
            let (js, payload, subject) = (js.clone(), payload.clone(), subject.clone());
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
    let r = (rate(acks, start.elapsed()), cpu0.until(&env.cpu().await));
    env.drop_stream(&t.stream).await;
    r
}

/// Raw Redis: `XADD` in pipelines of 1,000.
async fn raw_redis(env: &Env, n: usize) -> (f64, Usage) {
    use outbox::redis::redis;
    let key = format!("bench:{}:raw", crate::env::suffix());
    let mut conn = env.redis.clone();
    let payload = vec![b'x'; 256];
    let cpu0 = env.cpu().await;
    let start = Instant::now();
    let mut done = 0;
    while done < n {
        let end = (done + 1000).min(n);
        let mut pipe = redis::pipe();
        for i in done..end {
            pipe.cmd("XADD").arg(&key).arg("*").arg("payload").arg(&payload).arg("Outbox-Message-Id").arg(i).ignore();
        }
        let _: () = pipe.query_async(&mut conn).await.expect("xadd");
        done = end;
    }
    let r = (rate(n, start.elapsed()), cpu0.until(&env.cpu().await));
    let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(&key).query_async(&mut conn).await;
    r
}

/// The classic outbox publisher: `BEGIN; SELECT one row FOR UPDATE SKIP LOCKED`; publish and
/// await the JetStream ack; `DELETE; COMMIT` — one message per transaction.
pub(crate) async fn seed_style(env: &Env, n: usize) -> (f64, Usage) {
    let table = env.table(false).await;
    table.prefill(n, "seed", Keys::None).await;
    let t = env.jetstream().await;
    let js = async_nats::jetstream::new(env.nats.clone());
    let select = format!(
        "SELECT seq, id::text AS id, topic, payload FROM \"{}\" WHERE status = 0 ORDER BY seq LIMIT 1 \
         FOR UPDATE SKIP LOCKED",
        table.name
    );
    let delete = format!("DELETE FROM \"{}\" WHERE seq = $1", table.name);
    let cpu0 = env.cpu().await;
    let start = Instant::now();
    let mut done = 0;
    loop {
        let txn = table.db.begin().await.expect("begin");
        let Some(row) = txn.query_one_raw(stmt(select.clone())).await.expect("select") else {
            txn.commit().await.expect("commit");
            break;
        };
        let seq: i64 = row.try_get("", "seq").expect("seq");
        let id: String = row.try_get("", "id").expect("id");
        let topic: String = row.try_get("", "topic").expect("topic");
        let payload: Vec<u8> = row.try_get("", "payload").expect("payload");
        let msg = async_nats::jetstream::message::PublishMessage::build().payload(payload.into()).message_id(id);
        js.send_publish(format!("{}{topic}", t.prefix), msg).await.expect("send").await.expect("ack");
        let del = sea_orm::Statement::from_sql_and_values(sea_orm::DbBackend::Postgres, delete.clone(), [seq.into()]);
        txn.execute_raw(del).await.expect("delete");
        txn.commit().await.expect("commit");
        done += 1;
    }
    let r = (rate(done, start.elapsed()), cpu0.until(&env.cpu().await));
    table.drop().await;
    env.drop_stream(&t.stream).await;
    r
}

/// Prints a drain row; `floor` is min(raw SQL at this batch, raw broker) when there is one.
pub(crate) fn drain_row(
    section: &'static str,
    d: Drain,
    r: &Drained,
    floor: Option<(f64, &str)>,
    seed: Option<f64>,
) -> Row {
    let keys = match d.keys {
        Keys::None => String::new(),
        Keys::Spread(k) => format!(", {} keys", num(k as f64)),
    };
    let conc = if d.concurrency == 2 { String::new() } else { format!(", sweep concurrency {}", d.concurrency) };
    let parts = match (d.keys, d.partitions) {
        (Keys::None, _) => String::new(),
        (Keys::Spread(_), 0) => ", partitions off".to_owned(),
        (Keys::Spread(_), p) => format!(", {p} partitions"),
    };
    let name = format!("relay → {}, batch {}, {} relay(s){conc}{keys}{parts}", d.broker.name(), d.batch, d.relays);
    let mut row = Row::new(section, name, r.rate, "msg/s").n(d.n).cpu(r.cpu);
    if let Some((floor, label)) = floor {
        row = row.check(Check::ratio(label, r.rate / floor, None));
    }
    if let Some(seed) = seed {
        row = row.check(Check::ratio("seed-style", r.rate / seed, None));
    }
    if r.timed_out {
        row = row.note(format!("stopped at the deadline: {} of {} published", num(r.done as f64), num(d.n as f64)));
    }
    row
}

/// Runs every drain scenario and its baselines.
/// Runs the drains; returns the seed-style rate, the yardstick of the Kafka section.
pub(crate) async fn run(env: &Env, report: &mut Report, plan: &Plan, raw_sql_at: &[(usize, f64)]) -> f64 {
    let Plan { n, n_batch1, n_seed, .. } = *plan;
    println!("# drain: N = {n} (batch 1: {n_batch1}; seed-style: {n_seed}), 256-byte payloads, no keys");

    // Baselines first, each alone on the machine.
    let (raw_js, cpu) = raw_jetstream(env, n).await;
    report.add(
        Row::new("drain", "raw JetStream publish (pipelined, dedup ids, 256 acks in flight)", raw_js, "msg/s")
            .n(n)
            .cpu(cpu),
    );
    let (raw_rd, cpu) = raw_redis(env, n).await;
    report.add(Row::new("drain", "raw Redis XADD (pipelines of 1,000)", raw_rd, "msg/s").n(n).cpu(cpu));
    let (seed, cpu) = seed_style(env, n_seed).await;
    report.add(
        Row::new("drain", "seed-style relay → JetStream (1 msg per transaction, ack inside it)", seed, "msg/s")
            .n(n_seed)
            .cpu(cpu),
    );

    for (broker, raw_broker) in [(Broker::JetStream, raw_js), (Broker::Redis, raw_rd)] {
        let mut best: Option<(Drain, f64, f64)> = None;
        for batch in [1, 100, 1000] {
            for &relays in &plan.relays {
                let d = Drain {
                    broker,
                    n: if batch == 1 { n_batch1 } else { n },
                    keys: Keys::None,
                    batch,
                    relays,
                    concurrency: 2,
                    partitions: DEFAULT_KEY_PARTITIONS,
                };
                let r = relay_drain(env, d, plan.deadline).await;
                let floor = raw_sql_at.iter().find(|(b, _)| *b == batch).map(|(_, raw)| raw.min(raw_broker));
                report.add(drain_row("drain", d, &r, floor.map(|f| (f, "min(raw SQL, raw broker)")), Some(seed)));
                if let Some(f) = floor
                    && best.as_ref().is_none_or(|b| r.rate > b.1)
                {
                    best = Some((d, r.rate, f));
                }
            }
        }
        // Sweep concurrency (batches in flight per relay) at batch 1,000, one relay.
        if broker == Broker::JetStream {
            for &concurrency in &plan.concurrency {
                let d = Drain {
                    broker,
                    n,
                    keys: Keys::None,
                    batch: 1000,
                    relays: 1,
                    concurrency,
                    partitions: DEFAULT_KEY_PARTITIONS,
                };
                let r = relay_drain(env, d, plan.deadline).await;
                let floor = raw_sql_at[1].1.min(raw_broker);
                report.add(drain_row("drain", d, &r, Some((floor, "min(raw SQL, raw broker)")), Some(seed)));
                if best.as_ref().is_none_or(|b| r.rate > b.1) {
                    best = Some((d, r.rate, floor));
                }
            }
        }
        if let Some((d, r, floor)) = best {
            let conc = if d.concurrency == 2 { String::new() } else { format!(", concurrency {}", d.concurrency) };
            report.add(
                Row::new(
                    "drain",
                    format!("**best Postgres → {}** (batch {}, {} relay(s){conc})", broker.name(), d.batch, d.relays),
                    r,
                    "msg/s",
                )
                .check(Check::absolute(r, Goal::AtLeast(broker.target()), "msg/s"))
                .check(Check::ratio("min(raw SQL, raw broker)", r / floor, Some(Goal::AtLeast(0.6))))
                .check(Check::ratio("seed-style", r / seed, Some(Goal::AtLeast(20.0)))),
            );
        }
    }

    seed
}
