//! A private `redis-server` child on a free port, for tests that stop, stall or restart it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use outbox_core::testkit::eventually;

/// A `redis-server` child, killed (and its data dir removed) when dropped, even on panic.
pub struct Server {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl Server {
    /// Starts a server without persistence on a free port, or `None` (skip; a failure under
    /// `OUTBOX_TEST_STRICT=1`) when `redis-server` is not installed.
    pub async fn start() -> Option<Self> {
        Self::start_on(free_port()).await
    }

    /// Starts a server on `port` (e.g. again after the first one was dropped).
    pub async fn start_on(port: u16) -> Option<Self> {
        Self::start_with(port, &[]).await
    }

    /// Starts a server on a free port with extra `redis-server` options (e.g. `--maxmemory`).
    pub async fn start_configured(options: &[&str]) -> Option<Self> {
        Self::start_with(free_port(), options).await
    }

    async fn start_with(port: u16, options: &[&str]) -> Option<Self> {
        let dir = std::env::temp_dir().join(format!("outbox-redis-test-{}", outbox_core::testkit::unique_suffix()));
        std::fs::create_dir_all(&dir).ok()?;
        let spawned = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--dir"])
            .arg(&dir)
            .args(options)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) => return outbox_core::testkit::unreachable_server("PATH", "redis-server", e),
        };
        let server = Self { child, port, dir };
        eventually("redis-server to answer PING", Duration::from_secs(10), || async move {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
            let mut conn = client.get_multiplexed_async_connection().await.ok()?;
            redis::cmd("PING").query_async::<String>(&mut conn).await.ok().map(|_| ())
        })
        .await;
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing answers.
    pub fn stall(&self) {
        self.signal("-STOP");
    }

    /// Thaws a [`stall`](Self::stall)ed server.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill").arg(sig).arg(self.child.id().to_string()).status().expect("kill");
        assert!(status.success(), "kill {sig} failed");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
