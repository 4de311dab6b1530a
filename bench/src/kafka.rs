//! Postgres → Kafka drain beside a raw rdkafka producer, in the same run. The broker is
//! `OUTBOX_TEST_KAFKA_URL` (default `127.0.0.1:9092`); the section is skipped when none answers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use outbox::kafka::KafkaBus;
use outbox::kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use outbox::kafka::rdkafka::client::DefaultClientContext;
use outbox::kafka::rdkafka::config::ClientConfig;
use outbox::kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use outbox::kafka::rdkafka::error::{KafkaError, RDKafkaErrorCode};
use outbox::kafka::rdkafka::message::{Header, OwnedHeaders};
use outbox::kafka::rdkafka::producer::{FutureProducer, FutureRecord};

use crate::cpu::Usage;
use crate::drain::{Broker, Drain, Plan, drain_row, relay_drain};
use crate::env::{Env, Keys, suffix};
use crate::report::{Check, Report, Row, rate};

/// Partitions of each bench topic.
const PARTITIONS: i32 = 3;

/// The broker address.
pub(crate) fn servers() -> String {
    std::env::var("OUTBOX_TEST_KAFKA_URL").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

fn client() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", servers());
    c
}

/// Creates a fresh topic and returns its name (tansu creates no topic on first use).
pub(crate) async fn create_topic(name: &str) {
    let admin: AdminClient<DefaultClientContext> = client().create().expect("kafka admin");
    let topic = NewTopic::new(name, PARTITIONS, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in admin.create_topics([&topic], &opts).await.expect("create topic") {
        r.unwrap_or_else(|(t, code)| panic!("cannot create topic {t}: {code:?}"));
    }
}

/// Deletes a bench topic.
pub(crate) async fn delete_topic(name: &str) {
    let admin: AdminClient<DefaultClientContext> = client().create().expect("kafka admin");
    let _ = admin.delete_topics(&[name], &AdminOptions::new()).await;
}

/// How many records `topic` holds: the sum of its partitions' high watermarks.
pub(crate) async fn topic_len(topic: &str) -> u64 {
    let consumer: BaseConsumer = client().set("group.id", "outbox-bench").create().expect("consumer");
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        (0..PARTITIONS)
            .map(|p| consumer.fetch_watermarks(&topic, p, Duration::from_secs(5)).map_or(0, |(_, high)| high as u64))
            .sum()
    })
    .await
    .expect("watermarks")
}

/// The outbox bus with its defaults, publishing `<prefix><topic>`, and the prefix.
pub(crate) async fn bus() -> (Arc<KafkaBus>, String) {
    let prefix = format!("bench-{}-", suffix());
    let bus = KafkaBus::builder(servers()).topic_prefix(&prefix).build().expect("kafka bus");
    (Arc::new(bus), prefix)
}

/// Raw rdkafka: the bus's producer settings (idempotent, `acks=all`, `linger.ms=5`), every
/// record enqueued at once (waiting while the queue is full), then every delivery awaited.
async fn raw_kafka(env: &Env, n: usize) -> (f64, Usage) {
    let topic = format!("bench-{}-raw", suffix());
    create_topic(&topic).await;
    let producer: FutureProducer =
        client().set("enable.idempotence", "true").set("acks", "all").set("linger.ms", "5").create().expect("producer");
    let payload = vec![b'x'; 256];
    let cpu0 = env.cpu().await;
    let start = Instant::now();
    let mut deliveries = Vec::with_capacity(n);
    for i in 0..n {
        let id = i.to_string();
        let headers = OwnedHeaders::new().insert(Header { key: "Outbox-Message-Id", value: Some(id.as_str()) });
        let mut record = FutureRecord::<(), _>::to(&topic).payload(payload.as_slice()).headers(headers);
        loop {
            match producer.send_result(record) {
                Ok(d) => break deliveries.push(d),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => panic!("raw produce: {e}"),
            }
        }
    }
    let acked = futures::future::join_all(deliveries).await.into_iter().filter(|d| matches!(d, Ok(Ok(_)))).count();
    let r = (rate(acked, start.elapsed()), cpu0.until(&env.cpu().await));
    delete_topic(&topic).await;
    r
}

/// Whether a broker answers at [`servers`].
async fn reachable() -> bool {
    let consumer: BaseConsumer = client().create().expect("consumer");
    tokio::task::spawn_blocking(move || consumer.fetch_metadata(None, Duration::from_secs(5)).is_ok())
        .await
        .unwrap_or(false)
}

/// Runs the raw baseline and the relay drains (batch 100 and 1,000, 1 and 4 relays).
pub(crate) async fn run(env: &Env, report: &mut Report, plan: &Plan, raw_sql_at: &[(usize, f64)], seed: f64) {
    if !reachable().await {
        println!("# kafka: skipped, no broker answers at {} (OUTBOX_TEST_KAFKA_URL)", servers());
        return;
    }
    let n = plan.n;
    println!("# kafka: N = {n}, 256-byte payloads, no keys, {PARTITIONS} partitions, broker {}", servers());
    let (raw, cpu) = raw_kafka(env, n).await;
    report.add(
        Row::new("drain", "raw rdkafka produce (idempotent, acks=all, all enqueued then awaited)", raw, "msg/s")
            .n(n)
            .cpu(cpu),
    );
    let mut best: Option<(Drain, f64, f64)> = None;
    for (batch, relays) in [(100, 1), (1000, 1), (1000, 4)] {
        let d = Drain {
            broker: Broker::Kafka,
            n,
            keys: Keys::None,
            batch,
            relays,
            concurrency: 2,
            partitions: outbox::sea_orm::DEFAULT_KEY_PARTITIONS,
        };
        let r = relay_drain(env, d, plan.deadline).await;
        let floor = raw_sql_at.iter().find(|(b, _)| *b == batch).map(|(_, sql)| sql.min(raw));
        report.add(drain_row("drain", d, &r, floor.map(|f| (f, "min(raw SQL, raw broker)")), Some(seed)));
        if let Some(f) = floor
            && best.as_ref().is_none_or(|b| r.rate > b.1)
        {
            best = Some((d, r.rate, f));
        }
    }
    if let Some((d, r, floor)) = best {
        let name = format!("**best Postgres → Kafka** (batch {}, {} relay(s))", d.batch, d.relays);
        report.add(Row::new("drain", name, r, "msg/s").check(Check::ratio(
            "min(raw SQL, raw broker)",
            r / floor,
            None,
        )));
    }
}
