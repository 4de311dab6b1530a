//! The consumer binary as real processes on JetStream and Postgres: killed between its inbox
//! commit and its ack, and three of them sharing one durable consumer. Each waits on
//! conditions with a deadline, never on a fixed sleep.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outbox::nats::async_nats::{HeaderMap, jetstream};
use outbox::nats::{StreamSpec, ensure_stream};
use outbox::testkit::{test_url, unique_suffix, unreachable_server};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};

/// What the binary's crash hook prints (see `CONSUMER_CRASH_AFTER_COMMIT` in `src/main.rs`).
const CRASH_MARKER: &str = "crash point: committed, not acknowledged id=";

/// Both servers, or `None` to skip (a failure with `OUTBOX_TEST_STRICT=1`).
struct Servers {
    nats_url: String,
    pg_url: String,
    js: jetstream::Context,
    db: DatabaseConnection,
}

async fn servers() -> Option<Servers> {
    let nats_url = test_url("OUTBOX_TEST_NATS_URL", "nats://127.0.0.1:4222");
    let client = match outbox::nats::connect(&nats_url).await {
        Ok(c) => c,
        Err(e) => return unreachable_server("OUTBOX_TEST_NATS_URL", &nats_url, e),
    };
    let pg_url = test_url("OUTBOX_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test");
    let mut options = ConnectOptions::new(pg_url.clone());
    // A missing server should skip (or fail) the test quickly, not after the default 30 s.
    options
        .max_connections(2)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        .sqlx_logging(false);
    let db = match Database::connect(options).await {
        Ok(db) => db,
        Err(e) => return unreachable_server("OUTBOX_TEST_POSTGRES_URL", &pg_url, e),
    };
    Some(Servers { nats_url, pg_url, js: jetstream::new(client), db })
}

/// One running `consumer nats` process; its stdout is collected line by line. Dropping it
/// kills the process (SIGKILL), so a failed test leaves none behind.
struct Consumer {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Consumer {
    fn spawn(args: &[String], env: &[(&str, String)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_consumer"))
            .arg("nats")
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the consumer binary");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn({
            let lines = lines.clone();
            // Read everything, so the child never blocks on a full pipe.
            move || BufReader::new(stdout).lines().map_while(Result::ok).for_each(|l| lines.lock().unwrap().push(l))
        });
        Self { child, lines }
    }

    fn find(&self, f: impl Fn(&str) -> bool) -> Option<String> {
        self.lines.lock().unwrap().iter().find(|l| f(l)).cloned()
    }

    fn count(&self, prefix: &str) -> usize {
        self.lines.lock().unwrap().iter().filter(|l| l.starts_with(prefix)).count()
    }

    /// Panics if the process exited, with its status: it should run until killed.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("consumer exited early ({status}); stdout:\n{}", self.lines.lock().unwrap().join("\n"));
        }
    }

    /// SIGKILLs it and returns how it ended.
    fn kill(&mut self) -> std::process::ExitStatus {
        let _ = self.child.kill();
        self.child.wait().unwrap()
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every `every` until it returns `Some`; panics with `what` and the last value
/// seen after `timeout`.
async fn wait_for<T, S: std::fmt::Debug, F, Fut>(what: &str, timeout: Duration, every: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, S>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(state) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}: {state:?}")
            }
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}

async fn query_i64(db: &DatabaseConnection, sql: &str) -> i64 {
    let row = db.query_one_raw(Statement::from_string(DbBackend::Postgres, sql)).await.unwrap().unwrap();
    row.try_get_by_index::<i64>(0).unwrap()
}

/// Publishes without awaiting each ack: `id` is the `Outbox-Message-Id` the inbox keys on,
/// `nats_msg_id` what JetStream deduplicates on.
async fn publish(
    js: &jetstream::Context,
    subject: &str,
    id: &str,
    nats_msg_id: &str,
    key: &str,
    payload: String,
) -> jetstream::context::PublishAckFuture {
    let mut headers = HeaderMap::new();
    headers.insert("Outbox-Message-Id", id);
    headers.insert("Nats-Msg-Id", nats_msg_id);
    headers.insert("Outbox-Key", key);
    js.publish_with_headers(subject.to_owned(), headers, payload.into()).await.unwrap()
}

/// The arguments of a consumer on this test's stream, durable and tables.
fn consumer_args(s: &Servers, names: &Names, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--url",
        &s.nats_url,
        "--stream",
        &names.stream,
        "--durable",
        "shared",
        "--filter",
        &format!("{}.events.>", names.prefix),
        "--dead-letter",
        &format!("{}.dead", names.prefix),
        "--inbox",
        &s.pg_url,
        "--inbox-table",
        &names.inbox,
        "--events-table",
        &names.events,
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// A test's own stream, subjects and tables.
struct Names {
    stream: String,
    prefix: String,
    inbox: String,
    events: String,
}

impl Names {
    async fn create(s: &Servers, test: &str) -> Self {
        let suffix = unique_suffix();
        let names = Self {
            stream: format!("{}_{suffix}", test.to_uppercase()),
            prefix: format!("{test}{suffix}"),
            inbox: format!("{test}_inbox_{suffix}"),
            events: format!("{test}_events_{suffix}"),
        };
        ensure_stream(&s.js, &StreamSpec::new(&names.stream, [format!("{}.>", names.prefix)])).await.unwrap();
        names
    }

    async fn drop_all(&self, s: &Servers) {
        let _ = s.js.delete_stream(&self.stream).await;
        for t in [&self.events, &format!("{}_keys", self.events), &self.inbox] {
            let _ = s.db.execute_unprepared(&format!("DROP TABLE IF EXISTS {t}")).await;
        }
    }
}

/// Killed (SIGKILL) after the inbox committed a message and before it acknowledged it: the
/// message comes back to the next process, the inbox reports it a duplicate, and every
/// message's effect is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_between_commit_and_ack_stores_each_effect_once() {
    let Some(s) = servers().await else { return };
    let names = Names::create(&s, "crash").await;
    let subject = format!("{}.events.orders", names.prefix);
    let ids: Vec<String> = (0..6).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    for (i, id) in ids.iter().enumerate() {
        publish(&s.js, &subject, id, id, &format!("k{}", i % 2), format!(r#"{{"n":{i}}}"#)).await.await.unwrap();
    }
    // One handler at a time, so the stopped one holds the rest back; a short ack_wait, so the
    // unacknowledged messages come back soon after the kill.
    let args = consumer_args(&s, &names, &["--concurrency", "1", "--ack-wait", "2"]);

    let mut first = Consumer::spawn(&args, &[("CONSUMER_CRASH_AFTER_COMMIT", "3".into())]);
    let marker = wait_for("the crash point", Duration::from_secs(30), Duration::from_millis(20), || {
        let found = first.find(|l| l.starts_with(CRASH_MARKER));
        let exited = first.child.try_wait().unwrap();
        async move { found.ok_or(exited) }
    })
    .await;
    let crashed = marker.trim_start_matches(CRASH_MARKER).to_owned();
    assert!(ids.contains(&crashed), "{marker}");
    // The hook stops after the commit: the effect is stored, the message is not acknowledged.
    let stored = format!("SELECT count(*) FROM {} WHERE message_id = '{crashed}'", names.events);
    assert_eq!(query_i64(&s.db, &stored).await, 1);
    let info = s.js.get_stream(&names.stream).await.unwrap().consumer_info("shared").await.unwrap();
    assert!(info.num_ack_pending >= 1, "{info:?}");
    let status = first.kill();
    assert_eq!(status.signal(), Some(9), "{status}");
    assert_eq!(first.count("event id="), 3, "{:?}", first.lines.lock().unwrap());

    let mut second = Consumer::spawn(&args, &[]);
    let total = format!("SELECT count(*) FROM {}", names.events);
    let duplicate = format!("duplicate id={crashed} skipped");
    let expected = ids.len() as i64;
    wait_for("every effect and the duplicate", Duration::from_secs(30), Duration::from_millis(50), || {
        let (db, total, seen) = (s.db.clone(), total.clone(), second.find(|l| l == duplicate).is_some());
        async move {
            let n = query_i64(&db, &total).await;
            if n == expected && seen { Ok(()) } else { Err((n, seen)) }
        }
    })
    .await;
    second.assert_running();
    for id in &ids {
        let sql = format!("SELECT count(*) FROM {} WHERE message_id = '{id}'", names.events);
        assert_eq!(query_i64(&s.db, &sql).await, 1, "effects of {id}");
    }
    assert_eq!(query_i64(&s.db, &total).await, ids.len() as i64);
    let recorded = format!("SELECT count(*) FROM {} WHERE consumer = 'shared'", names.inbox);
    assert_eq!(query_i64(&s.db, &recorded).await, ids.len() as i64);
    // The crashed message was not stored again; the first process's others may have been.
    assert_eq!(second.count("event id=") + 3, ids.len(), "{:?}", second.lines.lock().unwrap());
    second.kill();
    names.drop_all(&s).await;
}

/// Three processes on one durable consumer and one Postgres database, 50 000 messages over 100
/// keys with 5 % of them published twice (a new `Nats-Msg-Id`, the same outbox id): one
/// effect per message, and each key's effects in its sequence order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_consumers_on_one_durable_store_each_effect_once_in_key_order() {
    const MESSAGES: u64 = 50_000;
    const KEYS: u64 = 100;
    let Some(s) = servers().await else { return };
    let started = Instant::now();
    let names = Names::create(&s, "shared").await;
    let subject = format!("{}.events.orders", names.prefix);
    // `--per-key` orders a key within what one process fetched; `--key-sequence` makes the
    // processes take turns on a key (concurrency >= batch, so nothing waited for is queued).
    let args = consumer_args(
        &s,
        &names,
        &["--per-key", "true", "--key-sequence", "--batch", "64", "--concurrency", "64", "--connections", "17"],
    );
    let mut consumers: Vec<Consumer> = (0..3).map(|_| Consumer::spawn(&args, &[])).collect();

    // Message i is key i % KEYS, sequence i / KEYS; every 20th is published again after its
    // chunk, so duplicates arrive both while and after the originals are handled.
    let mut duplicates = 0;
    for chunk in 0..MESSAGES.div_ceil(1000) {
        let mut acks = Vec::new();
        let mut ids = Vec::new();
        for i in chunk * 1000..((chunk + 1) * 1000).min(MESSAGES) {
            let (id, key) = (uuid::Uuid::now_v7().to_string(), format!("k{}", i % KEYS));
            let payload = format!(r#"{{"key":"{key}","seq":{}}}"#, i / KEYS);
            acks.push(publish(&s.js, &subject, &id, &id, &key, payload.clone()).await);
            if i % 20 == 0 {
                ids.push((id, key, payload));
            }
        }
        for (id, key, payload) in ids {
            acks.push(publish(&s.js, &subject, &id, &format!("{id}-again"), &key, payload).await);
            duplicates += 1;
        }
        for ack in acks {
            assert!(!ack.await.unwrap().duplicate);
        }
    }
    let published = started.elapsed();

    let total = format!("SELECT count(*) FROM {}", names.events);
    wait_for("every effect", Duration::from_secs(120), Duration::from_millis(250), || {
        let (db, total) = (s.db.clone(), total.clone());
        async move {
            let n = query_i64(&db, &total).await;
            if n >= MESSAGES as i64 { Ok(()) } else { Err(n) }
        }
    })
    .await;
    // Every delivery, duplicates included, acknowledged.
    let stream = s.js.get_stream(&names.stream).await.unwrap();
    wait_for("every ack", Duration::from_secs(60), Duration::from_millis(100), || {
        let info = stream.consumer_info("shared");
        async move {
            let info = info.await.unwrap();
            if info.num_pending == 0 && info.num_ack_pending == 0 { Ok(()) } else { Err(info) }
        }
    })
    .await;
    for c in &mut consumers {
        c.assert_running();
    }
    let consumed = started.elapsed();

    assert_eq!(query_i64(&s.db, &total).await, MESSAGES as i64);
    let distinct = format!("SELECT count(DISTINCT message_id) FROM {}", names.events);
    assert_eq!(query_i64(&s.db, &distinct).await, MESSAGES as i64);
    let inbox = format!("SELECT count(*) FROM {} WHERE consumer = 'shared'", names.inbox);
    assert_eq!(query_i64(&s.db, &inbox).await, MESSAGES as i64);
    // Per key: `n` is the order the effects were written in; their sequence numbers must
    // rise with it, and cover 0..MESSAGES / KEYS once each.
    let seqs = format!(
        "SELECT msg_key, (convert_from(payload, 'UTF8')::jsonb ->> 'seq')::bigint AS seq, n FROM {}",
        names.events
    );
    let out_of_order = format!(
        "SELECT count(*) FROM (SELECT seq, lag(seq) OVER (PARTITION BY msg_key ORDER BY n) AS prev FROM ({seqs}) s) o \
         WHERE prev IS NOT NULL AND seq <= prev"
    );
    assert_eq!(query_i64(&s.db, &out_of_order).await, 0, "effects out of key order");
    let bad_keys = format!(
        "SELECT count(*) FROM (SELECT msg_key FROM ({seqs}) s GROUP BY msg_key \
         HAVING count(*) <> {per_key} OR min(seq) <> 0 OR max(seq) <> {last}) k",
        per_key = MESSAGES / KEYS,
        last = MESSAGES / KEYS - 1,
    );
    assert_eq!(query_i64(&s.db, &bad_keys).await, 0);
    let keys = format!("SELECT count(DISTINCT msg_key) FROM {}", names.events);
    assert_eq!(query_i64(&s.db, &keys).await, KEYS as i64);

    // The processes report one stored event per message between them, and skipped at least
    // the injected duplicates; each one took part.
    let events: Vec<usize> = consumers.iter().map(|c| c.count("event id=")).collect();
    let skipped: usize = consumers.iter().map(|c| c.count("duplicate id=")).sum();
    assert_eq!(events.iter().sum::<usize>(), MESSAGES as usize, "{events:?}");
    assert!(events.iter().all(|&n| n > 0), "{events:?}");
    assert!(skipped >= duplicates, "{skipped} duplicates reported, {duplicates} injected");
    eprintln!(
        "published {} in {published:?}, all consumed after {consumed:?}; events per process {events:?}, \
         {skipped} duplicates skipped",
        MESSAGES as usize + duplicates
    );
    for mut c in consumers {
        c.kill();
    }
    names.drop_all(&s).await;
}

/// `--key-sequence` on SQLite, one process, a key's events published backwards: the later
/// ones wait for the earlier, so they are stored 0, 1, 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_sequence_stores_a_keys_events_in_seq_order() {
    let Some(s) = servers().await else { return };
    let names = Names::create(&s, "keyseq").await;
    let subject = format!("{}.events.orders", names.prefix);
    for seq in [2, 1, 0] {
        let id = uuid::Uuid::now_v7().to_string();
        publish(&s.js, &subject, &id, &id, "k", format!(r#"{{"seq":{seq}}}"#)).await.await.unwrap();
    }
    let file = std::env::temp_dir().join(format!("consumer-keyseq-{}.db", unique_suffix()));
    let mut args = consumer_args(&s, &names, &["--per-key", "false", "--key-sequence", "--max", "3"]);
    let at = args.iter().position(|a| a == &s.pg_url).unwrap();
    args[at] = file.display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_consumer")).arg("nats").args(&args).output().unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let db = outbox::sea_orm::connect_sqlite(&file).await.unwrap();
    let sql = format!("SELECT CAST(payload AS TEXT) FROM {} ORDER BY n", names.events);
    let rows = db.query_all_raw(Statement::from_string(DbBackend::Sqlite, sql)).await.unwrap();
    let stored: Vec<String> = rows.iter().map(|r| r.try_get_by_index(0).unwrap()).collect();
    assert_eq!(stored, [r#"{"seq":0}"#, r#"{"seq":1}"#, r#"{"seq":2}"#]);
    drop(db);
    let _ = s.js.delete_stream(&names.stream).await;
    let _ = std::fs::remove_file(&file);
}
