//! Shared test setup: a connection to the test server, a fresh stream, and a probe.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use async_nats::jetstream;
use async_trait::async_trait;
use outbox_core::testkit::bus::{BusProbe, Received};
use outbox_core::testkit::{test_url, unique_suffix, unreachable_server};
use outbox_core::{Headers, OutboxMessage};
use outbox_nats::{StreamSpec, connect, ensure_stream};

pub const VAR: &str = "OUTBOX_TEST_NATS_URL";

pub fn url() -> String {
    test_url(VAR, "nats://127.0.0.1:4222")
}

/// A client, or `None` (skip) when the server is unreachable outside strict mode.
pub async fn client() -> Option<async_nats::Client> {
    let url = url();
    match connect(&url).await {
        Ok(c) => Some(c),
        Err(e) => unreachable_server(VAR, &url, e),
    }
}

/// A fresh stream taking `<prefix>.>`; each test deletes it at its end.
pub struct TestStream {
    pub js: jetstream::Context,
    pub name: String,
    pub prefix: String,
}

impl TestStream {
    pub async fn new(client: &async_nats::Client) -> Self {
        let suffix = unique_suffix();
        let name = format!("T_{suffix}");
        let prefix = format!("t{suffix}");
        let js = jetstream::new(client.clone());
        ensure_stream(&js, &StreamSpec::new(&name, [format!("{prefix}.>")])).await.expect("create stream");
        Self { js, name, prefix }
    }

    pub fn topic(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    pub async fn count(&self) -> u64 {
        let mut s = self.js.get_stream(&self.name).await.expect("stream");
        s.info().await.expect("info").state.messages
    }

    /// Waits until `n` messages are stored (or `timeout`), then reads them all.
    pub async fn read(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.count().await < n as u64 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stream = self.js.get_stream(&self.name).await.expect("stream");
        let mut out = Vec::new();
        let last = stream.cached_info().state.last_sequence.max(self.count().await);
        for seq in 1..=last {
            if let Ok(m) = stream.get_raw_message(seq).await {
                let mut headers = Headers::new();
                for (k, vs) in m.headers.iter() {
                    if let Some(v) = vs.first() {
                        headers.insert(k.to_string(), v.as_str().to_owned());
                    }
                }
                out.push(Received { payload: m.payload.to_vec(), headers });
            }
        }
        out
    }

    pub async fn delete(&self) {
        let _ = self.js.delete_stream(&self.name).await;
    }
}

pub struct StreamProbe(pub TestStream);

/// A case that never reads (the empty batch) still removes its stream.
impl Drop for StreamProbe {
    fn drop(&mut self) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
            tokio::task::block_in_place(|| handle.block_on(self.0.delete()));
        }
    }
}

#[async_trait]
impl BusProbe for StreamProbe {
    async fn received(&self, _topic: &str, n: usize, timeout: Duration) -> Vec<Received> {
        let got = self.0.read(n, timeout).await;
        self.0.delete().await;
        got
    }
}

pub fn stored(msg: outbox_core::NewMessage) -> OutboxMessage {
    OutboxMessage::from_new(msg, outbox_core::message::now_millis())
}

/// Where the outage tests find the server binary.
pub const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// A private `nats-server -js` child on its own port and store dir, killed when dropped (also
/// when the test panics). The shared server on 4222 is never touched.
pub struct OwnServer {
    child: std::process::Child,
    pub port: u16,
    pub dir: std::path::PathBuf,
}

impl OwnServer {
    /// Starts one on a free port with a fresh store dir, or `None` (skip) without the binary.
    pub async fn start() -> Option<Self> {
        if !std::path::Path::new(NATS_SERVER).exists() {
            return unreachable_server("NATS_SERVER", NATS_SERVER, "nats-server binary not found");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("outbox-nats-test-{}", unique_suffix()));
        Some(Self::start_on(port, dir).await)
    }

    /// Starts one on `port` with the store in `dir` (a restart keeps the streams).
    pub async fn start_on(port: u16, dir: std::path::PathBuf) -> Self {
        let child = std::process::Command::new(NATS_SERVER)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start nats-server");
        let server = Self { child, port, dir };
        outbox_core::testkit::eventually("nats-server to accept connections", Duration::from_secs(10), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
        })
        .await;
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (an outage), keeping its store dir for a restart.
    pub fn kill(mut self) -> (u16, std::path::PathBuf) {
        self.stop();
        (self.port, std::mem::take(&mut self.dir))
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.stop();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The `outbox_nats` events logged on this thread while a capture runs. A global subscriber
/// hands each event to its thread's capture: scoped (thread-local) subscribers share callsite
/// interest across threads, so parallel tests would drop each other's events.
#[derive(Clone, Default)]
pub struct LogCapture(std::sync::Arc<std::sync::Mutex<Vec<(tracing::Level, String)>>>);

thread_local! {
    static CAPTURE: std::cell::RefCell<Option<LogCapture>> = const { std::cell::RefCell::new(None) };
}

/// Ends a [`LogCapture`] on drop.
pub struct CaptureGuard(());

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        CAPTURE.with(|c| c.borrow_mut().take());
    }
}

impl LogCapture {
    /// Records this thread's events until the guard drops: use a current-thread runtime.
    pub fn start() -> (Self, CaptureGuard) {
        static GLOBAL: std::sync::Once = std::sync::Once::new();
        GLOBAL.call_once(|| tracing::subscriber::set_global_default(Router).expect("no other global subscriber"));
        let capture = Self::default();
        CAPTURE.with(|c| *c.borrow_mut() = Some(capture.clone()));
        (capture, CaptureGuard(()))
    }

    /// Events at `level` whose fields mention `needle`.
    pub fn count(&self, level: tracing::Level, needle: &str) -> usize {
        self.0.lock().unwrap().iter().filter(|(l, text)| *l == level && text.contains(needle)).count()
    }
}

/// The global subscriber behind [`LogCapture`].
struct Router;

impl tracing::Subscriber for Router {
    fn enabled(&self, meta: &tracing::Metadata<'_>) -> bool {
        meta.target().starts_with("outbox_nats")
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        use std::fmt::Write as _;
        let Some(capture) = CAPTURE.with(|c| c.borrow().clone()) else { return };
        let mut text = String::new();
        event.record(&mut |field: &tracing::field::Field, value: &dyn std::fmt::Debug| {
            let _ = write!(text, "{}={value:?} ", field.name());
        });
        capture.0.lock().unwrap().push((*event.metadata().level(), text));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
