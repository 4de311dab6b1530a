//! Shared by the dashboard tests: a running `outbox dashboard` (or relay) on a free port, and
//! dead letters made the way the relay makes them.
#![allow(dead_code, unreachable_pub)]

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox::{Disposition, Failure, Lease, MessageId, NewMessage, OutboxStore};

use crate::common::{BIN, Db};

/// A running process serving the dashboard, with its stderr collected.
pub struct Served {
    pub child: Child,
    pub base: String,
    log: Arc<Mutex<String>>,
}

impl Served {
    /// `outbox dashboard --addr 127.0.0.1:0 <args>` against `db`'s table.
    pub async fn dashboard(db: &Db, args: &[&str]) -> Self {
        let mut all = vec!["dashboard", "--addr", "127.0.0.1:0"];
        all.extend_from_slice(args);
        Self::start(&db.env(), &all).await
    }

    /// `outbox <args>` with `env`; waits until it says where the dashboard listens.
    pub async fn start(env: &[(&str, String)], args: &[&str]) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env_remove("DATABASE_URL")
            .env_remove("NATS_URL")
            .env_remove("REDIS_URL")
            .env_remove("OUTBOX_DASHBOARD_TOKEN")
            .env_remove("OUTBOX_DASHBOARD_ADDR")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start outbox");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let base = loop {
            if let Some(base) = listening(&log.lock().unwrap()) {
                break base;
            }
            assert!(matches!(child.try_wait(), Ok(None)), "outbox exited during start-up:\n{}", log.lock().unwrap());
            assert!(tokio::time::Instant::now() < deadline, "dashboard not listening within 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Self { child, base, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

/// `http://127.0.0.1:PORT` from the "dashboard listening on http://…/" line.
fn listening(log: &str) -> Option<String> {
    let rest = log.split("dashboard listening on ").nth(1)?;
    let url = rest.split_whitespace().next()?;
    Some(url.trim_end_matches('/').to_owned())
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Enqueues a message, claims it and fails it into the dead-letter state, as a relay would.
pub async fn dead_letter(db: &Db, topic: &str, key: &str, payload: &str, error: &str) -> MessageId {
    let m = NewMessage::new(topic, payload.as_bytes().to_vec()).key(key);
    let id = m.id;
    db.store.enqueue(vec![m]).await.expect("enqueue");
    let lease = Lease::new(Duration::from_secs(30));
    let claimed = db.store.claim_ids(&[id], &lease).await.expect("claim");
    assert_eq!(claimed.len(), 1, "claimed the new message");
    let failure = Failure { id, error: error.to_owned(), disposition: Disposition::DeadLetter };
    db.store.fail(&[failure], &lease).await.expect("fail");
    id
}

/// An HTTP client that shows redirects instead of following them.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client")
}

/// (pending, dead) now.
pub async fn counts(db: &Db) -> (u64, u64) {
    let s = db.store.stats().await.expect("stats");
    (s.pending, s.dead)
}

/// The value of `name="csrf" value="…"` in a page.
pub fn csrf_in(html: &str) -> Option<String> {
    let rest = html.split("name=\"csrf\" value=\"").nth(1)?;
    Some(rest.split('"').next()?.to_owned())
}
