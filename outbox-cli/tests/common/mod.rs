//! Shared harness: real `outbox` processes, a Postgres outbox, a broker reader, and a TCP
//! proxy that can cut a server off without touching the shared server itself.
#![allow(dead_code, unreachable_pub)]

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use outbox::nats::async_nats;
use outbox::sea_orm::{SqlStore, SqlStoreConfig, migrate};
use outbox::testkit::{test_url, unique_suffix, unreachable_server};
use outbox::{MessageId, NewMessage, OutboxStore};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub const BIN: &str = env!("CARGO_BIN_EXE_outbox");

pub fn pg_url() -> String {
    test_url("OUTBOX_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
}
pub fn nats_url() -> String {
    test_url("OUTBOX_TEST_NATS_URL", "nats://127.0.0.1:4222")
}
pub fn redis_url() -> String {
    test_url("OUTBOX_TEST_REDIS_URL", "redis://127.0.0.1:6379")
}

/// Runs `outbox` to completion.
pub fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = assert_cmd::Command::cargo_bin("outbox").expect("outbox binary");
    cmd.args(args).env_remove("DATABASE_URL").env_remove("NATS_URL").env_remove("REDIS_URL").env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run outbox")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A Postgres outbox table of its own, migrated with the CLI.
pub struct Db {
    pub url: String,
    pub table: String,
    pub store: SqlStore,
}

impl Db {
    /// `None` (skip) when Postgres is unreachable outside strict mode.
    pub async fn new() -> Option<Self> {
        Self::at(pg_url()).await
    }

    /// An outbox table on the server at `url`.
    pub async fn at(url: String) -> Option<Self> {
        let db = match sea_orm::Database::connect(&url).await {
            Ok(db) => db,
            Err(e) => return unreachable_server("OUTBOX_TEST_POSTGRES_URL", &url, e),
        };
        let table = format!("cli_{}", unique_suffix());
        let config = SqlStoreConfig::default().table(table.clone()).notify_channel(table.clone());
        migrate(&db, &config).await.expect("migrate");
        let store = SqlStore::new(db, config).expect("store");
        Some(Self { url, table, store })
    }

    /// Enqueues `n` messages over `keys` keys in transactions of `per_tx`, returning the
    /// ids per key in enqueue order.
    pub async fn write(&self, topic: &str, n: usize, keys: usize, per_tx: usize) -> HashMap<String, Vec<MessageId>> {
        let mut by_key: HashMap<String, Vec<MessageId>> = HashMap::new();
        let mut batch = Vec::new();
        for i in 0..n {
            let key = format!("key-{}", i % keys);
            let m = NewMessage::new(topic, format!("{{\"n\":{i}}}")).key(key.clone());
            by_key.entry(key).or_default().push(m.id);
            batch.push(m);
            if batch.len() == per_tx || i + 1 == n {
                self.store.enqueue(std::mem::take(&mut batch)).await.expect("enqueue");
            }
        }
        by_key
    }

    pub async fn pending(&self) -> u64 {
        self.store.stats().await.expect("stats").pending
    }

    pub async fn drop_table(&self) {
        use sea_orm::ConnectionTrait;
        let _ = self.store.connection().execute_unprepared(&format!("DROP TABLE IF EXISTS \"{}\"", self.table)).await;
    }

    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![("DATABASE_URL", self.url.clone()), ("OUTBOX_TABLE", self.table.clone())]
    }
}

/// A running `outbox relay`, with its stderr collected as it comes.
pub struct RelayProcess {
    pub child: Child,
    log: Arc<std::sync::Mutex<String>>,
}

impl RelayProcess {
    pub fn start(env: &[(&str, String)], args: &[&str]) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.arg("relay").args(args).env_remove("DATABASE_URL").env_remove("NATS_URL").env_remove("REDIS_URL");
        cmd.env("RUST_LOG", "info").stdout(Stdio::null()).stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start outbox relay");
        let log = Arc::new(std::sync::Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            let log = log.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        Self { child, log }
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill").args([sig, &self.child.id().to_string()]).status();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until the relay says it is running (its signal handlers are installed by then).
    pub async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !self.log.lock().unwrap().contains("relay running") {
            assert!(self.is_running(), "relay exited during start-up:\n{}", self.log.lock().unwrap());
            assert!(tokio::time::Instant::now() < deadline, "relay not ready within 30 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Once ready, SIGTERM, then waits (bounded) for the exit; returns the exit code and log.
    pub async fn terminate(mut self) -> (Option<i32>, String) {
        self.wait_ready().await;
        self.signal("-TERM");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return (status.code(), self.log.lock().unwrap().clone());
            }
            assert!(tokio::time::Instant::now() < deadline, "relay did not exit within 20 s of SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A JetStream stream of its own plus a core-NATS tap that sees every publish, including
/// the ones the stream's dedup drops.
pub struct NatsSink {
    pub client: async_nats::Client,
    pub stream: String,
    pub prefix: String,
    tap: Arc<std::sync::Mutex<Vec<(MessageId, std::time::Instant)>>>,
    tap_task: JoinHandle<()>,
}

impl NatsSink {
    pub async fn new() -> Option<Self> {
        Self::taking(&[">"]).await
    }

    /// A sink whose stream takes only these subjects after the prefix (e.g. `orders`).
    pub async fn taking(subjects: &[&str]) -> Option<Self> {
        let url = nats_url();
        let client = match outbox::nats::connect(&url).await {
            Ok(c) => c,
            Err(e) => return unreachable_server("OUTBOX_TEST_NATS_URL", &url, e),
        };
        let suffix = unique_suffix();
        let stream = format!("CLI_{suffix}");
        let prefix = format!("cli{suffix}.");
        let js = async_nats::jetstream::new(client.clone());
        let subjects: Vec<String> = subjects.iter().map(|s| format!("{prefix}{s}")).collect();
        outbox::nats::ensure_stream(&js, &outbox::nats::StreamSpec::new(&stream, subjects.clone()))
            .await
            .expect("stream");
        let tap = Arc::new(std::sync::Mutex::new(Vec::new()));
        // The tap listens where the stream does, and nowhere else: a core subscriber on other
        // subjects would answer JetStream's "no responders" for them.
        let taps =
            futures::future::try_join_all(subjects.iter().map(|s| client.subscribe(s.clone()))).await.expect("tap");
        let mut sub = futures::stream::select_all(taps);
        client.flush().await.expect("flush");
        let seen = tap.clone();
        let tap_task = tokio::spawn(async move {
            use futures::StreamExt;
            while let Some(m) = sub.next().await {
                if let Some(Ok(id)) =
                    m.headers.as_ref().and_then(|h| h.get("Outbox-Message-Id")).map(|id| id.as_str().parse())
                {
                    seen.lock().unwrap().push((id, std::time::Instant::now()));
                }
            }
        });
        Some(Self { client, stream, prefix, tap, tap_task })
    }

    /// Every publish the tap saw (duplicates included).
    pub fn publishes(&self) -> usize {
        self.tap.lock().unwrap().len()
    }

    /// When the tap first saw each message.
    pub fn first_seen(&self) -> HashMap<MessageId, std::time::Instant> {
        let mut first = HashMap::new();
        for (id, at) in self.tap.lock().unwrap().iter() {
            first.entry(*id).or_insert(*at);
        }
        first
    }

    /// The stream's messages in stream order: (key, id).
    pub async fn stored(&self) -> Vec<(String, MessageId)> {
        let js = async_nats::jetstream::new(self.client.clone());
        let stream = js.get_stream(&self.stream).await.expect("stream");
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
            .await
            .expect("consumer");
        let total = stream.cached_info().state.messages as usize;
        let mut out = Vec::with_capacity(total);
        use futures::StreamExt;
        let mut messages = consumer.messages().await.expect("messages");
        while out.len() < total {
            let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(10), messages.next()).await else { break };
            let h = m.headers.as_ref().expect("headers");
            let id = h.get("Outbox-Message-Id").expect("id").as_str().parse().expect("uuid");
            let key = h.get("Outbox-Key").map(|k| k.as_str().to_owned()).unwrap_or_default();
            out.push((key, id));
        }
        out
    }

    pub async fn count(&self) -> u64 {
        let js = async_nats::jetstream::new(self.client.clone());
        let mut stream = js.get_stream(&self.stream).await.expect("stream");
        stream.info().await.expect("info").state.messages
    }

    pub async fn delete(self) {
        self.tap_task.abort();
        let js = async_nats::jetstream::new(self.client.clone());
        let _ = js.delete_stream(&self.stream).await;
    }
}

/// What the consumer saw against what was committed.
#[derive(Debug, Default)]
pub struct Verdict {
    pub committed: usize,
    pub delivered: usize,
    pub lost: usize,
    pub duplicates_seen: usize,
    pub order_violations: usize,
}

impl Verdict {
    pub fn of(committed: &HashMap<String, Vec<MessageId>>, received: &[(String, MessageId)]) -> Self {
        let all: HashSet<MessageId> = committed.values().flatten().copied().collect();
        let mut seen = HashSet::new();
        let mut duplicates_seen = 0;
        let mut per_key: HashMap<&str, Vec<MessageId>> = HashMap::new();
        for (key, id) in received {
            if !seen.insert(*id) {
                duplicates_seen += 1;
                continue;
            }
            per_key.entry(key.as_str()).or_default().push(*id);
        }
        let order_violations = committed
            .iter()
            .map(|(k, ids)| {
                let got = per_key.get(k.as_str()).cloned().unwrap_or_default();
                let expected: Vec<MessageId> = ids.iter().copied().filter(|id| seen.contains(id)).collect();
                got.iter().zip(&expected).filter(|(a, b)| a != b).count()
            })
            .sum();
        Self {
            committed: all.len(),
            delivered: seen.intersection(&all).count(),
            lost: all.difference(&seen).count(),
            duplicates_seen,
            order_violations,
        }
    }
}

/// A TCP proxy in front of a server; `cut()` drops every connection and refuses new ones
/// until `restore()`: an outage for the relay only, not for the shared server.
pub struct Proxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
    task: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: (String, u16)) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(tokio::sync::watch::channel(0u64).0);
        let (u, g) = (up.clone(), generation.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !u.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused in effect
                }
                let target = target.clone();
                let mut cut = g.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect((target.0.as_str(), target.1)).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self { port, up, generation, task }
    }

    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `scheme://host:port/rest` → (host, port).
pub fn host_port(url: &str) -> (String, u16) {
    let rest = url.split("://").nth(1).expect("url");
    let hostport = rest.split('/').next().unwrap();
    let hostport = hostport.rsplit('@').next().unwrap();
    let (h, p) = hostport.rsplit_once(':').expect("port");
    (h.to_owned(), p.parse().expect("port number"))
}

/// `url` with its host and port replaced by 127.0.0.1:`port`.
pub fn via(url: &str, port: u16) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let creds = authority.rsplit_once('@').map(|(c, _)| format!("{c}@")).unwrap_or_default();
    let path = if path.is_empty() { String::new() } else { format!("/{path}") };
    format!("{scheme}://{creds}127.0.0.1:{port}{path}")
}

/// Polls `check` until it holds or `timeout` passes; returns whether it held.
pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Scale of the reliability runs: `OUTBOX_RELIABILITY_SCALE=full` for the documented figures.
pub fn full_scale() -> bool {
    std::env::var("OUTBOX_RELIABILITY_SCALE").is_ok_and(|v| v == "full")
}

/// Every entry of a Redis stream as (key, id), in stream order.
pub async fn redis_stream(
    conn: &mut outbox::redis::redis::aio::ConnectionManager,
    stream: &str,
) -> Vec<(String, MessageId)> {
    use outbox::redis::redis::{self, Value};
    let entries: Vec<Value> =
        redis::cmd("XRANGE").arg(stream).arg("-").arg("+").query_async(conn).await.expect("XRANGE");
    entries
        .iter()
        .filter_map(|e| {
            let Value::Array(parts) = e else { return None };
            let Value::Array(fields) = parts.get(1)? else { return None };
            let field = |name: &str| {
                fields.chunks(2).find_map(|kv| match (&kv[0], &kv[1]) {
                    (Value::BulkString(k), Value::BulkString(v)) if k == name.as_bytes() => {
                        Some(String::from_utf8_lossy(v).into_owned())
                    }
                    _ => None,
                })
            };
            Some((field("Outbox-Key")?, field("Outbox-Message-Id")?.parse().ok()?))
        })
        .collect()
}

/// A Postgres server of the test's own (`initdb` in a temporary directory, a free port), so a
/// test can stop and start a real server without disturbing the shared one.
pub struct PrivatePostgres {
    pub url: String,
    dir: std::path::PathBuf,
    bin: std::path::PathBuf,
    port: u16,
}

impl PrivatePostgres {
    pub fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries under /usr/lib/postgresql (Debian's postgresql package)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|b| b.join("initdb").exists())
            .max()
            .expect("initdb under /usr/lib/postgresql/*/bin");
        let dir = std::env::temp_dir().join(format!("outbox-pg-{}", unique_suffix()));
        std::fs::create_dir_all(&dir).expect("data dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let me = Self { url: format!("postgres://postgres@127.0.0.1:{port}/postgres"), dir, bin, port };
        if Self::as_root() {
            // initdb and postgres refuse to run as root.
            let ok = Command::new("chown").arg("postgres:postgres").arg(&me.dir).status().expect("chown");
            assert!(ok.success(), "chown {} to postgres", me.dir.display());
        }
        let data = me.dir.join("data");
        me.pg("initdb", &["-D", data.to_str().unwrap(), "-A", "trust", "-U", "postgres", "--no-sync"]);
        me.ctl("start");
        me
    }

    fn as_root() -> bool {
        Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
    }

    /// Runs a server binary, as the `postgres` user when the tests run as root.
    fn pg(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut cmd = if Self::as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd.args(args).stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{tool}: {e}"));
        assert!(out.status.success(), "{tool} {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }

    fn ctl(&self, action: &str) {
        let data = self.dir.join("data");
        let log = self.dir.join("server.log");
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", self.port, self.dir.display());
        let mut args = vec!["-D", data.to_str().unwrap(), "-l", log.to_str().unwrap(), "-w", "-t", "60"];
        if action == "start" {
            args.extend(["-o", &options]);
        } else {
            args.extend(["-m", "fast"]);
        }
        args.push(action);
        self.pg("pg_ctl", &args);
    }

    /// Stops the server (fast shutdown: sessions are cut, as in a restart).
    pub fn stop(&self) {
        self.ctl("stop");
    }

    /// Starts it again on the same port and data.
    pub fn start_again(&self) {
        self.ctl("start");
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = Command::new(self.bin.join("pg_ctl"))
            .args(["-D", data.to_str().unwrap(), "-m", "immediate", "stop"])
            .output();
        if Self::as_root() {
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"))
                .args(["-D", data.to_str().unwrap(), "-m", "immediate", "stop"])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
