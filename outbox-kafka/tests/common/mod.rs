//! Shared test setup: the test broker, a fresh topic per test, a reader, and a private broker
//! for outage tests.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use outbox_core::testkit::bus::{BusProbe, Received};
use outbox_core::testkit::{eventually, test_url, unique_suffix, unreachable_server};
use outbox_core::{Headers, MessageId, OutboxMessage};
use outbox_kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use outbox_kafka::rdkafka::client::DefaultClientContext;
use outbox_kafka::rdkafka::config::ClientConfig;
use outbox_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use outbox_kafka::rdkafka::message::{Headers as _, Message};
use outbox_kafka::rdkafka::{Offset, TopicPartitionList};
use outbox_kafka::{KafkaBus, KafkaBusBuilder};

pub const VAR: &str = "OUTBOX_TEST_KAFKA_URL";

pub fn url() -> String {
    test_url(VAR, "127.0.0.1:9092")
}

/// A bus on `servers` with the test settings applied by `tune`, or `None` (skip) when no
/// broker answers there outside strict mode.
pub async fn bus_on(servers: &str, tune: impl FnOnce(KafkaBusBuilder) -> KafkaBusBuilder) -> Option<KafkaBus> {
    let bus = tune(KafkaBus::builder(servers)).build().expect("bus");
    match bus.check(Duration::from_secs(10)).await {
        Ok(()) => Some(bus),
        Err(e) => unreachable_server(VAR, servers, e),
    }
}

/// A bus on the shared test broker.
pub async fn bus(tune: impl FnOnce(KafkaBusBuilder) -> KafkaBusBuilder) -> Option<KafkaBus> {
    bus_on(&url(), tune).await
}

fn client(servers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", servers);
    c
}

/// A topic of its own for one test, created on the broker (auto-creation is off in the bus).
pub struct TestTopic {
    pub name: String,
    pub servers: String,
}

impl TestTopic {
    /// Creates `t-<suffix>-<what>` with `partitions` partitions and any topic `config`.
    pub async fn create(servers: &str, what: &str, partitions: i32, config: &[(&str, &str)]) -> Self {
        let name = format!("t-{}-{what}", unique_suffix());
        let admin: AdminClient<DefaultClientContext> = client(servers).create().expect("admin client");
        let mut topic = NewTopic::new(&name, partitions, TopicReplication::Fixed(1));
        for (k, v) in config {
            topic = topic.set(k, v);
        }
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin.create_topics([&topic], &opts).await.expect("create topic");
        for r in results {
            r.unwrap_or_else(|(t, code)| panic!("cannot create topic {t}: {code:?}"));
        }
        let me = Self { name, servers: servers.to_owned() };
        let (servers, name) = (me.servers.clone(), me.name.clone());
        eventually("the new topic to show in the metadata", Duration::from_secs(10), move || {
            let (servers, name) = (servers.clone(), name.clone());
            async move { (partition_count(&servers, &name).await == Some(partitions as usize)).then_some(()) }
        })
        .await;
        me
    }

    /// Every record in the topic once at least `n` arrived (or `timeout` passed).
    pub async fn read(&self, n: usize, timeout: Duration) -> Vec<Record> {
        read(&self.servers, &self.name, n, timeout).await
    }
}

/// How many partitions `topic` has, or `None` if the broker does not know it.
pub async fn partition_count(servers: &str, topic: &str) -> Option<usize> {
    let consumer = consumer(servers);
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(5)).ok()?;
        let t = md.topics().iter().find(|t| t.name() == topic)?;
        (t.error().is_none() && !t.partitions().is_empty()).then(|| t.partitions().len())
    })
    .await
    .unwrap()
}

fn consumer(servers: &str) -> BaseConsumer {
    client(servers)
        .set("group.id", format!("outbox-test-{}", unique_suffix()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer")
}

/// A record as the consumer read it.
#[derive(Clone, Debug)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: Headers,
}

impl Record {
    pub fn id(&self) -> MessageId {
        self.headers[outbox_core::message::HEADER_MESSAGE_ID].parse().expect("an outbox id")
    }
}

/// Reads every partition of `topic` from the start until `n` records arrived or `timeout`
/// passed, then returns them in (partition, offset) order.
pub async fn read(servers: &str, topic: &str, n: usize, timeout: Duration) -> Vec<Record> {
    let consumer = consumer(servers);
    let partitions = partition_count(servers, topic).await.unwrap_or_else(|| panic!("topic {topic} is unknown"));
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions as i32 {
            tpl.add_partition_offset(&topic, p, Offset::Beginning).unwrap();
        }
        consumer.assign(&tpl).expect("assign");
        let deadline = std::time::Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n && std::time::Instant::now() < deadline {
            let Some(polled) = consumer.poll(Duration::from_millis(100)) else { continue };
            let m = polled.expect("fetch");
            let mut headers = Headers::new();
            if let Some(hs) = m.headers() {
                for h in hs.iter() {
                    let value = h.value.map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
                    headers.insert(h.key.to_owned(), value);
                }
            }
            out.push(Record {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                payload: m.payload().unwrap_or_default().to_vec(),
                headers,
            });
        }
        out.sort_by_key(|r| (r.partition, r.offset));
        out
    })
    .await
    .unwrap()
}

pub struct TopicProbe(pub TestTopic);

#[async_trait]
impl BusProbe for TopicProbe {
    async fn received(&self, _topic: &str, n: usize, timeout: Duration) -> Vec<Received> {
        let got = self.0.read(n, timeout).await;
        got.into_iter().map(|r| Received { payload: r.payload, headers: r.headers }).collect()
    }
}

pub fn stored(msg: outbox_core::NewMessage) -> OutboxMessage {
    OutboxMessage::from_new(msg, outbox_core::message::now_millis())
}

/// Per key, the sequence numbers (the `<n>` of payloads `k<key>-<n>`) in the order the topic
/// holds them, after checking that each key lives in one partition and never goes back: a
/// retry may repeat a message only before the key's next one.
pub fn assert_each_key_in_order(records: &[Record]) -> BTreeMap<String, Vec<usize>> {
    let mut keys: BTreeMap<String, (i32, Vec<usize>)> = BTreeMap::new();
    for r in records {
        let key = r.key.clone().expect("a keyed record");
        let payload = String::from_utf8_lossy(&r.payload).into_owned();
        let seq = payload.rsplit('-').next().and_then(|n| n.parse().ok()).expect("a k<key>-<n> payload");
        let (partition, seqs) = keys.entry(key.clone()).or_insert((r.partition, Vec::new()));
        assert_eq!(*partition, r.partition, "key {key} in two partitions");
        seqs.push(seq);
    }
    keys.into_iter()
        .map(|(key, (_, seqs))| {
            assert!(seqs.windows(2).all(|w| w[0] <= w[1]), "key {key} out of order: {seqs:?}");
            (key, seqs)
        })
        .collect()
}

/// Where the outage tests find the broker: `TANSU`, else `tansu` in `~/.cargo/bin`, else on `PATH`.
pub fn tansu_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TANSU") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))?;
    let candidate = home.join("bin/tansu");
    if candidate.exists() {
        return Some(candidate);
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join("tansu")).find(|p| p.exists())
}

/// A private tansu broker on its own port, storing in SQLite in its own directory so that a
/// restart keeps every record. Killed when dropped (also when the test panics); the shared
/// broker is never touched.
pub struct OwnBroker {
    child: std::process::Child,
    pub port: u16,
    pub dir: PathBuf,
    binary: PathBuf,
}

impl OwnBroker {
    /// Starts one on a free port with a fresh store, or `None` (skip) without the binary.
    pub async fn start() -> Option<Self> {
        let Some(binary) = tansu_binary() else {
            return unreachable_server("TANSU", "tansu", "the tansu binary was not found (cargo install tansu)");
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("outbox-kafka-test-{}", unique_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        Some(Self::start_on(binary, port, dir).await)
    }

    async fn start_on(binary: PathBuf, port: u16, dir: PathBuf) -> Self {
        let listener = format!("tcp://127.0.0.1:{port}");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("broker.log")).unwrap();
        let child = std::process::Command::new(&binary)
            .args(["broker", "--listener-url", &listener, "--advertised-listener-url", &listener])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(&dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start tansu");
        let mut broker = Self { child, port, dir, binary };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if let Ok(Some(status)) = broker.child.try_wait() {
                let log = std::fs::read_to_string(broker.dir.join("broker.log")).unwrap_or_default();
                panic!("tansu exited ({status}) before listening (is it built with `--features libsql`?):\n{log}");
            }
            assert!(tokio::time::Instant::now() < deadline, "tansu did not listen on {port} within 20 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        broker
    }

    pub fn servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker (an outage), keeping its store for [`OwnBroker::restart`].
    pub fn kill(mut self) -> Stopped {
        self.stop();
        Stopped { port: self.port, dir: std::mem::take(&mut self.dir), binary: self.binary.clone() }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("the broker's store and log are kept in {}", self.dir.display());
        } else if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A killed [`OwnBroker`]'s port and store.
pub struct Stopped {
    pub port: u16,
    dir: PathBuf,
    binary: PathBuf,
}

impl Stopped {
    /// Starts the broker again on the same port and store.
    pub async fn restart(self) -> OwnBroker {
        OwnBroker::start_on(self.binary, self.port, self.dir).await
    }
}
