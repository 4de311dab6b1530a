//! The `outbox` binary against Postgres + NATS and Postgres + Redis.

mod common;

use std::time::Duration;

use common::{Db, NatsSink, RelayProcess, run, stderr, stdout};
use outbox::{Disposition, Failure, Lease, NewMessage, OutboxStore};

fn env_of(db: &Db) -> Vec<(&'static str, String)> {
    db.env()
}

fn refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_and_status_json() {
    let Some(db) = Db::new().await else { return };
    let env = env_of(&db);
    let out = run(&["migrate"], &refs(&env));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&db.table));
    db.write("orders", 5, 2, 5).await;
    let out = run(&["status", "--json", "--top", "1"], &refs(&env));
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["pending"], 5);
    assert_eq!(json["dead"], 0);
    assert_eq!(json["top_keys"][0]["key"], "key-0");
    assert_eq!(json["top_keys"][0]["pending"], 3);
    assert!(json["oldest_pending_age_seconds"].as_f64().is_some());
    let human = run(&["status"], &refs(&env));
    assert!(stdout(&human).contains("pending   5"), "{}", stdout(&human));
    db.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_to_nats_drains_on_sigterm_and_loses_nothing() {
    let (Some(db), Some(sink)) = (Db::new().await, NatsSink::new().await) else { return };
    let mut env = env_of(&db);
    env.extend([
        ("NATS_URL", common::nats_url()),
        ("OUTBOX_STREAM", sink.stream.clone()),
        ("OUTBOX_PREFIX", sink.prefix.clone()),
    ]);
    let committed = db.write("orders", 500, 20, 50).await;
    let relay = RelayProcess::start(&env, &["--bus", "nats", "--interval", "100ms", "--min-age", "0s"]);
    assert!(
        common::wait_until(Duration::from_secs(30), || async { sink.count().await >= 500 }).await,
        "first 500 published"
    );
    let more = db.write("orders", 300, 20, 1).await;
    let (code, err) = relay.terminate().await;
    assert_eq!(code, Some(0), "clean exit on SIGTERM: {err}");
    // Whatever the drain did not reach is still committed in the table: start again to finish.
    let relay = RelayProcess::start(&env, &["--bus", "nats", "--interval", "100ms", "--min-age", "0s"]);
    assert!(common::wait_until(Duration::from_secs(30), || async { db.pending().await == 0 }).await, "drained");
    let (code, _) = relay.terminate().await;
    assert_eq!(code, Some(0));
    let mut all = committed;
    for (k, v) in more {
        all.entry(k).or_default().extend(v);
    }
    let verdict = common::Verdict::of(&all, &sink.stored().await);
    assert_eq!((verdict.lost, verdict.duplicates_seen, verdict.order_violations), (0, 0, 0), "{verdict:?}");
    sink.delete().await;
    db.drop_table().await;
}

/// A Redis connection, a stream-key prefix of the test's own, and the relay's environment.
struct Redis {
    conn: outbox::redis::redis::aio::ConnectionManager,
    prefix: String,
    env: Vec<(&'static str, String)>,
}

impl Redis {
    /// `None` (skip) when Redis is unreachable outside strict mode.
    async fn new(db: &Db) -> Option<Self> {
        let url = common::redis_url();
        let conn = match outbox::redis::connect(&url).await {
            Ok(conn) => conn,
            Err(e) => return outbox::testkit::unreachable_server("OUTBOX_TEST_REDIS_URL", &url, e),
        };
        let prefix = format!("cli:{}:", outbox::testkit::unique_suffix());
        let mut env = env_of(db);
        env.extend([("REDIS_URL", url), ("OUTBOX_PREFIX", prefix.clone())]);
        Some(Self { conn, prefix, env })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_to_redis_drains_on_sigterm_and_loses_nothing() {
    let Some(db) = Db::new().await else { return };
    let Some(Redis { mut conn, prefix, env }) = Redis::new(&db).await else { return };
    let committed = db.write("orders", 400, 10, 40).await;
    let relay = RelayProcess::start(&env, &["--bus", "redis", "--interval", "100ms", "--min-age", "0s"]);
    assert!(common::wait_until(Duration::from_secs(30), || async { db.pending().await == 0 }).await, "drained");
    let (code, err) = relay.terminate().await;
    assert_eq!(code, Some(0), "{err}");
    let stream = format!("{prefix}orders");
    let received = common::redis_stream(&mut conn, &stream).await;
    let verdict = common::Verdict::of(&committed, &received);
    assert_eq!((verdict.lost, verdict.duplicates_seen, verdict.order_violations), (0, 0, 0), "{verdict:?}");
    let _: i64 = outbox::redis::redis::cmd("DEL").arg(&stream).query_async(&mut conn).await.unwrap();
    db.drop_table().await;
}

/// A Kafka topic of the test's own (the test broker creates none by itself), and the relay's
/// environment.
struct Kafka {
    servers: String,
    topic: String,
    env: Vec<(&'static str, String)>,
}

impl Kafka {
    const PARTITIONS: i32 = 3;

    /// `None` (skip) when no broker answers outside strict mode.
    async fn new(db: &Db, topic: &str) -> Option<Self> {
        use outbox::kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        use outbox::kafka::rdkafka::client::DefaultClientContext;

        let servers = outbox::testkit::test_url("OUTBOX_TEST_KAFKA_URL", "127.0.0.1:9092");
        let probe = outbox::kafka::KafkaBus::builder(&servers).build().unwrap();
        if let Err(e) = probe.check(Duration::from_secs(10)).await {
            return outbox::testkit::unreachable_server("OUTBOX_TEST_KAFKA_URL", &servers, e);
        }
        let prefix = format!("cli-{}.", outbox::testkit::unique_suffix());
        let admin: AdminClient<DefaultClientContext> = Self::client(&servers).create().unwrap();
        let topic = format!("{prefix}{topic}");
        let new = NewTopic::new(&topic, Self::PARTITIONS, TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for r in admin.create_topics([&new], &opts).await.unwrap() {
            r.unwrap();
        }
        let mut env = env_of(db);
        env.extend([("KAFKA_BROKERS", servers.clone()), ("OUTBOX_PREFIX", prefix.clone())]);
        Some(Self { servers, topic, env })
    }

    fn client(servers: &str) -> outbox::kafka::rdkafka::ClientConfig {
        let mut c = outbox::kafka::rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", servers);
        c
    }

    /// Every record's (key, outbox id), partition by partition, once `n` arrived or 30 s passed.
    async fn read(&self, n: usize) -> Vec<(String, outbox::MessageId)> {
        use outbox::kafka::rdkafka::consumer::{BaseConsumer, Consumer};
        use outbox::kafka::rdkafka::message::{Headers as _, Message};
        use outbox::kafka::rdkafka::{Offset, TopicPartitionList};

        let consumer: BaseConsumer = Self::client(&self.servers)
            .set("group.id", format!("cli-test-{}", outbox::testkit::unique_suffix()))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for p in 0..Self::PARTITIONS {
                tpl.add_partition_offset(&topic, p, Offset::Beginning).unwrap();
            }
            consumer.assign(&tpl).unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let mut got = Vec::new();
            while got.len() < n && std::time::Instant::now() < deadline {
                let Some(m) = consumer.poll(Duration::from_millis(100)) else { continue };
                let m = m.unwrap();
                let id = m
                    .headers()
                    .and_then(|hs| hs.iter().find(|h| h.key == outbox::message::HEADER_MESSAGE_ID))
                    .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
                    .expect("an outbox id header");
                let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                got.push((m.partition(), m.offset(), key, id));
            }
            got.sort_by_key(|r| (r.0, r.1));
            got.into_iter().map(|(_, _, key, id)| (key, id)).collect()
        })
        .await
        .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_to_kafka_drains_on_sigterm_and_loses_nothing() {
    let Some(db) = Db::new().await else { return };
    let Some(kafka) = Kafka::new(&db, "orders").await else { return };
    let committed = db.write("orders", 400, 10, 40).await;
    let relay = RelayProcess::start(&kafka.env, &["--bus", "kafka", "--interval", "100ms", "--min-age", "0s"]);
    assert!(common::wait_until(Duration::from_secs(30), || async { db.pending().await == 0 }).await, "drained");
    let (code, err) = relay.terminate().await;
    assert_eq!(code, Some(0), "{err}");
    let received = kafka.read(400).await;
    let verdict = common::Verdict::of(&committed, &received);
    assert_eq!((verdict.lost, verdict.duplicates_seen, verdict.order_violations), (0, 0, 0), "{verdict:?}");
    db.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_list_show_replay_and_purge() {
    let Some(db) = Db::new().await else { return };
    let env = env_of(&db);
    let ids = db
        .store
        .enqueue(vec![
            NewMessage::new("billing", "{\"a\":1}"),
            NewMessage::new("billing", "2"),
            NewMessage::new("mail", "3"),
        ])
        .await
        .unwrap();
    let lease = Lease::new(Duration::from_secs(30));
    db.store.claim_ids(&ids, &lease).await.unwrap();
    let failures: Vec<_> = ids
        .iter()
        .map(|id| Failure { id: *id, error: "payload too large".into(), disposition: Disposition::DeadLetter })
        .collect();
    db.store.fail(&failures, &lease).await.unwrap();

    let out = run(&["dead", "list", "--topic", "billing", "--json"], &refs(&env));
    assert!(out.status.success(), "{}", stderr(&out));
    let list: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[0]["last_error"], "payload too large");

    let out = run(&["dead", "show", &ids[0].to_string()], &refs(&env));
    let shown: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(shown["payload"]["a"], 1, "JSON payloads are shown as JSON");

    let unknown = uuid::Uuid::now_v7().to_string();
    let out = run(&["dead", "replay", &unknown, &ids[0].to_string()], &refs(&env));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(&unknown) && stderr(&out).contains("nothing replayed"), "{}", stderr(&out));
    assert_eq!(db.store.stats().await.unwrap().dead, 3, "an unknown id changes nothing");

    let out = run(&["dead", "replay", &ids[0].to_string()], &refs(&env));
    assert!(stdout(&out).contains("replayed 1"), "{}", stdout(&out));
    let out = run(&["dead", "replay", "--topic", "mail"], &refs(&env));
    assert!(stdout(&out).contains("replayed 1"));
    let out = run(&["dead", "purge", "--older-than", "1h"], &refs(&env));
    assert!(stdout(&out).contains("purged 0"), "too young to purge");
    let out = run(&["dead", "purge", "--older-than", "0s"], &refs(&env));
    assert!(stdout(&out).contains("purged 1"), "{}", stdout(&out));
    let out = run(&["dead", "replay", "--all"], &refs(&env));
    assert!(stdout(&out).contains("replayed 0"));
    assert_eq!(db.store.stats().await.unwrap().pending, 2);
    db.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_published_deletes_kept_rows_in_batches() {
    let (Some(db), Some(sink)) = (Db::new().await, NatsSink::new().await) else { return };
    let mut env = env_of(&db);
    env.extend([
        ("NATS_URL", common::nats_url()),
        ("OUTBOX_STREAM", sink.stream.clone()),
        ("OUTBOX_PREFIX", sink.prefix.clone()),
    ]);
    db.write("orders", 25, 5, 25).await;
    let relay =
        RelayProcess::start(&env, &["--bus", "nats", "--retention", "keep", "--min-age", "0s", "--interval", "100ms"]);
    assert!(common::wait_until(Duration::from_secs(30), || async { db.pending().await == 0 }).await);
    relay.terminate().await;
    let out = run(&["purge-published", "--older-than", "0s", "--batch", "10"], &refs(&env));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("purged 25"), "{}", stdout(&out));
    sink.delete().await;
    db.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoint_reports_database_and_broker() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (Some(db), Some(sink)) = (Db::new().await, NatsSink::new().await) else { return };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut env = env_of(&db);
    env.extend([
        ("NATS_URL", common::nats_url()),
        ("OUTBOX_STREAM", sink.stream.clone()),
        ("OUTBOX_PREFIX", sink.prefix.clone()),
    ]);
    let addr = format!("127.0.0.1:{port}");
    let relay = RelayProcess::start(&env, &["--health-addr", &addr]);
    let get = || async {
        let mut s = tokio::net::TcpStream::connect(&addr).await.ok()?;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).await.ok()?;
        Some(body)
    };
    let ok =
        common::wait_until(Duration::from_secs(20), || async { get().await.is_some_and(|b| b.contains("200 OK")) })
            .await;
    let body = get().await.unwrap_or_default();
    assert!(ok, "{body}");
    assert!(body.contains("\"database\":{\"ok\":true}") && body.contains("\"broker\":{\"ok\":true}"), "{body}");
    assert!(body.contains("\"relay\":{\"ok\":true}"), "{body}");
    relay.terminate().await;
    sink.delete().await;
    db.drop_table().await;
}

/// A relay deployed before its stream exists retries instead of dead-lettering, and its
/// health endpoint says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_fails_while_no_stream_takes_the_relays_subjects() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(db) = Db::new().await else { return };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let prefix = format!("nostream{}.", outbox::testkit::unique_suffix());
    let mut env = env_of(&db);
    // An empty stream name: streams are managed elsewhere, and nobody made one.
    env.extend([("NATS_URL", common::nats_url()), ("OUTBOX_STREAM", String::new()), ("OUTBOX_PREFIX", prefix.clone())]);
    let addr = format!("127.0.0.1:{port}");
    let relay = RelayProcess::start(&env, &["--health-addr", &addr]);
    db.write("orders", 3, 3, 3).await;
    let get = || async {
        let mut s = tokio::net::TcpStream::connect(&addr).await.ok()?;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).await.ok()?;
        Some(body)
    };
    let failing = common::wait_until(Duration::from_secs(20), || async {
        get().await.is_some_and(|b| b.contains("503 Service Unavailable") && b.contains(&format!("{prefix}orders")))
    })
    .await;
    let body = get().await.unwrap_or_default();
    assert!(failing, "{body}");
    assert!(body.contains("\"database\":{\"ok\":true}") && body.contains("\"relay\":{\"ok\":true}"), "{body}");
    assert_eq!(db.pending().await, 3, "retried, not dead-lettered");
    relay.terminate().await;
    db.drop_table().await;
}

#[test]
fn usage_errors_exit_with_code_2() {
    for (args, needle) in [
        (vec!["status", "--no-such-flag"], "--no-such-flag"),
        (vec!["--database-url", "not-a-url", "status"], "not a URL"),
        (vec!["--database-url", "ftp://x/y", "status"], "unsupported scheme"),
        (vec!["dead", "purge", "--older-than", "7x"], "7x"),
        (vec!["purge-published", "--older-than", "1d", "--batch", "0"], "--batch"),
        (vec!["dead", "show", "not-a-uuid"], "not-a-uuid"),
        (vec!["relay", "--claim-mode", "sometimes"], "sometimes"),
    ] {
        let out = run(&args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_servers_are_named_with_their_address() {
    let out = run(&["status"], &[("DATABASE_URL", "postgres://postgres@127.0.0.1:1/test")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot reach the database at postgres://postgres@127.0.0.1:1/test"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("panicked"));

    let out = run(&["status"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("DATABASE_URL"), "{}", stderr(&out));

    let Some(db) = Db::new().await else { return };
    let env = env_of(&db);
    let mut env = refs(&env);
    env.push(("NATS_URL", "nats://127.0.0.1:1"));
    let out = run(&["relay", "--bus", "nats"], &env);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("NATS at nats://127.0.0.1:1"), "{}", stderr(&out));
    let out = run(&["relay", "--bus", "redis", "--redis-url", "redis://127.0.0.1:1"], &env);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("Redis at redis://127.0.0.1:1"), "{}", stderr(&out));
    let out = run(&["relay", "--bus", "kafka", "--kafka-brokers", "127.0.0.1:1"], &env);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no Kafka broker at 127.0.0.1:1"), "{}", stderr(&out));
    let out = run(&["relay", "--bus", "kafka", "--kafka-option", "acks=1"], &env);
    assert_eq!(out.status.code(), Some(2), "the producer's guarantees cannot be switched off");
    assert!(stderr(&out).contains("--kafka-option"), "{}", stderr(&out));
    let out = run(&["relay", "--batch-size", "0"], &env);
    assert_eq!(out.status.code(), Some(2), "a bad setting is found before connecting");
    assert!(stderr(&out).contains("--batch-size"), "{}", stderr(&out));
    db.drop_table().await;
}

#[test]
fn transaction_claims_need_postgres() {
    let dir = std::env::temp_dir().join(format!("outbox-cli-{}", outbox::testkit::unique_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("outbox.db").display());
    let out = run(&["relay", "--claim-mode", "transaction"], &[("DATABASE_URL", &url)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("`store.claim_mode`") && stderr(&out).contains("Postgres-only"), "{}", stderr(&out));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_says_to_run_migrate() {
    let out = run(&["--table", "never_migrated_table", "status"], &[("DATABASE_URL", &common::pg_url())]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("migration"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_beat_environment_which_beats_the_config_file() {
    let Some(db) = Db::new().await else { return };
    let dir = std::env::temp_dir().join(format!("outbox-cli-{}", outbox::testkit::unique_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("outbox.toml");
    // The file names the real table; the environment then a missing one; the flag the real one again.
    std::fs::write(&file, format!("database_url = \"{}\"\ntable = \"{}\"\n", db.url, db.table)).unwrap();
    db.write("orders", 2, 1, 2).await;
    let config = file.to_str().unwrap();
    let from_file = run(&["--config", config, "status", "--json"], &[]);
    assert!(stdout(&from_file).contains("\"pending\": 2"), "{}", stderr(&from_file));
    let env_wins = run(&["--config", config, "status"], &[("OUTBOX_TABLE", "no_such_table_here")]);
    assert!(stderr(&env_wins).contains("no_such_table_here"), "{}", stderr(&env_wins));
    let flag_wins =
        run(&["--config", config, "--table", &db.table, "status", "--json"], &[("OUTBOX_TABLE", "no_such_table_here")]);
    assert!(stdout(&flag_wins).contains("\"pending\": 2"), "{}", stderr(&flag_wins));
    std::fs::write(&file, "relay = 3\n").unwrap();
    let bad = run(&["--config", config, "status"], &[]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("invalid config file"), "{}", stderr(&bad));
    let _ = std::fs::remove_dir_all(&dir);
    db.drop_table().await;
}

/// A config file of its own, removed on drop.
struct ConfigFile(std::path::PathBuf);

impl ConfigFile {
    fn new(text: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("outbox-cli-{}", outbox::testkit::unique_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("outbox.toml"), text).unwrap();
        Self(dir)
    }

    fn path(&self) -> String {
        self.0.join("outbox.toml").display().to_string()
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `outbox [--config file] relay --check ARGS`: the effective `[relay]` settings, each value
/// in its TOML spelling (`32`, `"5ms"`, `false`).
fn effective(
    file: Option<&ConfigFile>,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::collections::BTreeMap<String, String> {
    let path = file.map(ConfigFile::path);
    let mut all: Vec<&str> = path.iter().flat_map(|p| ["--config", p.as_str()]).collect();
    all.extend(["relay", "--check"]);
    all.extend(args);
    let out = run(&all, env);
    assert!(out.status.success(), "{all:?}: {}", stderr(&out));
    let printed: toml::Table = toml::from_str(&stdout(&out)).expect("--check prints TOML");
    printed["relay"].as_table().expect("[relay]").iter().map(|(k, v)| (k.clone(), v.to_string())).collect()
}

fn assert_settings(shown: &std::collections::BTreeMap<String, String>, expected: &[(&str, &str)]) {
    for (key, value) in expected {
        assert_eq!(shown.get(*key).map(String::as_str), Some(*value), "relay.{key} in {shown:#?}");
    }
}

#[test]
fn relay_check_shows_the_defaults() {
    let shown = effective(None, &[], &[]);
    assert_settings(
        &shown,
        &[
            ("listener_max_batch", "256"),
            ("listener_linger", "\"0s\""),
            ("listener_concurrency", "4"),
            ("batch_size", "500"),
            ("interval", "\"1s\""),
            ("min_age", "\"2s\""),
            ("fallback_concurrency", "2"),
            ("fallback_stats_interval", "\"15s\""),
            ("max_attempts", "10"),
            ("retry_initial_backoff", "\"200ms\""),
            ("retry_max_backoff", "\"1m\""),
            ("retry_factor", "2.0"),
            ("retry_jitter", "true"),
            ("claim_ttl", "\"30s\""),
            ("shutdown_timeout", "\"10s\""),
            ("nats_window", "256"),
            ("nats_ack_timeout", "\"5s\""),
            ("nats_duplicate_window", "\"10m\""),
        ],
    );
    assert!(!shown.contains_key("redis_dedup"), "Redis settings only with --bus redis: {shown:#?}");
    let redis = effective(None, &["--bus", "redis"], &[]);
    assert_settings(
        &redis,
        &[
            ("prefix", "\"outbox:\""),
            ("redis_dedup", "\"lua\""),
            ("redis_dedup_window", "\"10m\""),
            ("redis_response_timeout", "\"5s\""),
            ("redis_connection_timeout", "\"5s\""),
        ],
    );
    assert!(!redis.contains_key("redis_max_len"), "no trimming by default");
    let kafka = effective(None, &["--bus", "kafka"], &[]);
    assert_settings(
        &kafka,
        &[
            ("prefix", "\"\""),
            ("kafka_brokers", "\"127.0.0.1:9092\""),
            ("kafka_delivery_timeout", "\"10s\""),
            ("kafka_request_timeout", "\"5s\""),
            ("kafka_linger", "\"5ms\""),
            ("kafka_client_id", "\"outbox\""),
        ],
    );
    assert!(!kafka.contains_key("nats_window") && !kafka.contains_key("redis_dedup"), "{kafka:#?}");
    let chosen = effective(None, &["--kafka-option", "sasl.password=hunter2"], &[("KAFKA_BROKERS", "k1:9092,k2:9092")]);
    assert_settings(&chosen, &[("bus", "\"kafka\""), ("kafka_brokers", "\"k1:9092,k2:9092\"")]);
    let printed = run(&["relay", "--check", "--kafka-option", "sasl.password=hunter2"], &[("KAFKA_BROKERS", "k:1")]);
    assert!(
        !stdout(&printed).contains("hunter2") && stdout(&printed).contains("sasl.password"),
        "{}",
        stdout(&printed)
    );
    // --batch-size sizes listener batches too, and the ack timeout follows a short claim TTL.
    let derived = effective(None, &["--batch-size", "64", "--claim-ttl", "4s"], &[]);
    assert_settings(&derived, &[("listener_max_batch", "64"), ("batch_size", "64"), ("nats_ack_timeout", "\"2s\"")]);
}

#[test]
fn relay_check_shows_what_flags_environment_and_the_config_file_set() {
    let file = ConfigFile::new(
        r#"
[relay]
batch_size = 100
listener_max_batch = 16
listener_linger = "5ms"
listener_concurrency = 8
fallback_concurrency = 3
fallback_stats_interval = "1m"
retry_initial_backoff = "1s"
retry_max_backoff = "2m"
retry_factor = 3
retry_jitter = false
shutdown_timeout = "20s"
nats_window = 64
nats_ack_timeout = "2s"
nats_duplicate_window = "20m"
redis_dedup = "off"
redis_dedup_window = "1h"
redis_max_len = 5000
redis_response_timeout = "250ms"
redis_connection_timeout = "2s"
"#,
    );
    let nats = effective(
        Some(&file),
        &["--listener-max-batch", "32", "--retry-factor", "1.5"],
        &[("OUTBOX_FALLBACK_CONCURRENCY", "5"), ("OUTBOX_RETRY_JITTER", "true")],
    );
    assert_settings(
        &nats,
        &[
            ("listener_max_batch", "32"),  // flag over file
            ("retry_factor", "1.5"),       // flag over file
            ("fallback_concurrency", "5"), // environment over file
            ("retry_jitter", "true"),      // environment over file
            ("batch_size", "100"),
            ("listener_linger", "\"5ms\""),
            ("listener_concurrency", "8"),
            ("fallback_stats_interval", "\"1m\""),
            ("retry_initial_backoff", "\"1s\""),
            ("retry_max_backoff", "\"2m\""),
            ("shutdown_timeout", "\"20s\""),
            ("nats_window", "64"),
            ("nats_ack_timeout", "\"2s\""),
            ("nats_duplicate_window", "\"20m\""),
        ],
    );
    assert_eq!(effective(Some(&file), &[], &[])["retry_factor"], "3.0", "an integer factor in the file");
    let redis = effective(
        Some(&file),
        &["--bus", "redis", "--redis-dedup", "idmp-or-lua", "--redis-max-len", "1000"],
        &[("OUTBOX_REDIS_DEDUP_WINDOW", "30m")],
    );
    assert_settings(
        &redis,
        &[
            ("redis_dedup", "\"idmp-or-lua\""),
            ("redis_max_len", "1000"),
            ("redis_dedup_window", "\"30m\""),
            ("redis_response_timeout", "\"250ms\""),
            ("redis_connection_timeout", "\"2s\""),
        ],
    );

    // The printout is itself a config file that gives the same settings back.
    let out = run(&["--config", &file.path(), "relay", "--check", "--bus", "redis"], &[]);
    let printed = ConfigFile::new(&stdout(&out));
    let again = run(&["--config", &printed.path(), "relay", "--check"], &[]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(stdout(&again), stdout(&out));
}

#[test]
fn bad_relay_settings_name_their_flag_and_config_key() {
    for (args, needles) in [
        (vec!["--listener-max-batch", "0"], vec!["`listener.max_batch` must be at least 1", "--listener-max-batch"]),
        (vec!["--batch-size", "0"], vec!["at least 1", "--batch-size", "relay.batch_size"]),
        (vec!["--listener-concurrency", "0"], vec!["`listener.concurrency`", "OUTBOX_LISTENER_CONCURRENCY"]),
        (vec!["--listener-linger", "30s"], vec!["`listener.linger` must be shorter than", "--listener-linger"]),
        (vec!["--fallback-concurrency", "0"], vec!["`fallback.concurrency`", "relay.fallback_concurrency"]),
        (vec!["--fallback-stats-interval", "0s"], vec!["`fallback.stats_interval`", "--fallback-stats-interval"]),
        (vec!["--retry-initial-backoff", "0s"], vec!["`retry.initial_backoff` must be above 0", "--retry-initial"]),
        (vec!["--retry-initial-backoff", "2m"], vec!["`retry.max_backoff` must be at least", "--retry-max-backoff"]),
        (vec!["--retry-factor", "0.5"], vec!["`retry.factor`", "--retry-factor", "relay.retry_factor"]),
        (vec!["--retry-factor", "fast"], vec!["--retry-factor", "fast"]),
        (vec!["--retry-jitter", "maybe"], vec!["--retry-jitter", "maybe"]),
        (vec!["--shutdown-timeout", "soon"], vec!["--shutdown-timeout", "soon"]),
        (vec!["--nats-window", "0"], vec!["`nats.window` must be between 1 and 65536", "--nats-window"]),
        (vec!["--nats-ack-timeout", "0s"], vec!["`nats.ack_timeout`", "--nats-ack-timeout"]),
        (vec!["--bus", "redis", "--redis-max-len", "0"], vec!["`redis.max_len`", "--redis-max-len"]),
        (vec!["--bus", "redis", "--redis-dedup-window", "2d"], vec!["`redis.dedup_window`", "--redis-dedup-window"]),
        (vec!["--bus", "redis", "--redis-dedup", "maybe"], vec!["--redis-dedup", "maybe"]),
        (
            vec!["--bus", "redis", "--redis-response-timeout", "11m"],
            vec!["`redis.response_timeout`", "--redis-response-timeout"],
        ),
        (
            vec!["--bus", "redis", "--redis-connection-timeout", "0s"],
            vec!["`redis.connection_timeout`", "relay.redis_connection_timeout"],
        ),
    ] {
        for check in [true, false] {
            // Without --check too: the relay refuses before connecting to anything.
            let mut all = vec!["relay"];
            all.extend(check.then_some("--check"));
            all.extend(&args);
            let out = run(&all, &[]);
            assert_eq!(out.status.code(), Some(2), "{all:?}: {}", stderr(&out));
            for needle in &needles {
                assert!(stderr(&out).contains(needle), "{all:?}: no {needle:?} in {}", stderr(&out));
            }
        }
    }
    for (text, needles) in [
        ("listener_max_batch = 0", vec!["`listener.max_batch`", "relay.listener_max_batch"]),
        ("retry_factor = -1.0", vec!["`retry.factor`", "relay.retry_factor"]),
        ("bus = \"redis\"\nredis_max_len = 0", vec!["`redis.max_len`", "relay.redis_max_len"]),
        ("listener_linger = \"soon\"", vec!["relay.listener_linger", "soon"]),
        ("retry_jitter = \"yes\"", vec!["retry_jitter"]),
        ("listner_linger = \"1s\"", vec!["unknown field", "listner_linger"]),
    ] {
        let file = ConfigFile::new(&format!("[relay]\n{text}\n"));
        let out = run(&["--config", &file.path(), "relay", "--check"], &[]);
        assert_eq!(out.status.code(), Some(2), "{text}: {}", stderr(&out));
        for needle in &needles {
            assert!(stderr(&out).contains(needle), "{text}: no {needle:?} in {}", stderr(&out));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_creates_its_stream_with_the_duplicate_window_asked_for() {
    let Some(db) = Db::new().await else { return };
    let client = match outbox::nats::connect(&common::nats_url()).await {
        Ok(client) => client,
        Err(e) => {
            outbox::testkit::unreachable_server::<()>("OUTBOX_TEST_NATS_URL", &common::nats_url(), e);
            return;
        }
    };
    let suffix = outbox::testkit::unique_suffix();
    let stream = format!("CLI_DW_{suffix}");
    let mut env = env_of(&db);
    env.extend([
        ("NATS_URL", common::nats_url()),
        ("OUTBOX_STREAM", stream.clone()),
        ("OUTBOX_PREFIX", format!("clidw{suffix}.")),
    ]);
    let relay = RelayProcess::start(&env, &["--bus", "nats", "--nats-duplicate-window", "20m", "--nats-window", "8"]);
    let (code, log) = relay.terminate().await;
    assert_eq!(code, Some(0), "{log}");
    let js = outbox::nats::async_nats::jetstream::new(client);
    let mut created = js.get_stream(&stream).await.expect("the relay created the stream");
    let window = created.info().await.expect("info").config.duplicate_window;
    let _ = js.delete_stream(&stream).await;
    assert_eq!(window, Duration::from_secs(1200), "20m, not the default 10m");
    db.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_max_len_trims_the_streams() {
    let Some(db) = Db::new().await else { return };
    let Some(Redis { mut conn, prefix, env }) = Redis::new(&db).await else { return };
    db.write("orders", 400, 4, 40).await;
    let relay = RelayProcess::start(
        &env,
        &["--bus", "redis", "--redis-max-len", "10", "--redis-dedup", "off", "--min-age", "0s"],
    );
    assert!(common::wait_until(Duration::from_secs(30), || async { db.pending().await == 0 }).await, "drained");
    let (code, log) = relay.terminate().await;
    assert_eq!(code, Some(0), "{log}");
    let stream = format!("{prefix}orders");
    let len: u64 = outbox::redis::redis::cmd("XLEN").arg(&stream).query_async(&mut conn).await.unwrap();
    let _: i64 = outbox::redis::redis::cmd("DEL").arg(&stream).query_async(&mut conn).await.unwrap();
    // `MAXLEN ~ 10` drops whole stream nodes (100 entries each by default), so about 100 stay.
    assert!((1..400).contains(&len), "XLEN {len}: 400 were published, trimming keeps fewer");
    db.drop_table().await;
}
