//! Shared by the dashboard tests: a running `outbox dashboard` (or relay) on a free port, and
//! dead letters made the way the relay makes them.
#![allow(dead_code, unreachable_pub)]

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox::sea_orm::{SqlStore, SqlStoreConfig, connect_sqlite, migrate};
use outbox::testkit::{test_url, unique_suffix, unreachable_server};
use outbox::{Disposition, Failure, Lease, MessageId, NewMessage, OutboxStore, Retention};
use sea_orm::ConnectionTrait;

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
        match Self::try_start(env, args).await {
            Ok(served) => served,
            Err(log) => panic!("outbox exited during start-up:\n{log}"),
        }
    }

    /// Like [`Served::start`], but an exit during start-up is `Err(its log)`.
    pub async fn try_start(env: &[(&str, String)], args: &[&str]) -> Result<Self, String> {
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
        let reader = std::thread::spawn(move || {
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
            if !matches!(child.try_wait(), Ok(None)) {
                // Its stderr is closed: the reader ends once it has every line.
                let _ = reader.join();
                return Err(log.lock().unwrap().clone());
            }
            assert!(tokio::time::Instant::now() < deadline, "dashboard not listening within 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Ok(Self { child, base, log })
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

/// Enqueues a message and publishes it as a relay would; the row stays, marked published, when
/// the store keeps published rows.
pub async fn published(db: &Db, topic: &str) -> MessageId {
    let m = NewMessage::new(topic, "{}");
    let id = m.id;
    db.store.enqueue(vec![m]).await.expect("enqueue");
    let lease = Lease::new(Duration::from_secs(30));
    assert_eq!(db.store.claim_ids(&[id], &lease).await.expect("claim").len(), 1);
    assert_eq!(db.store.complete(&[id], &lease).await.expect("complete"), 1);
    id
}

/// A port nobody listens on now (for servers that do not log the one they took).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The SQL backends the CLI supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    MySql,
    Sqlite,
}

/// An outbox table of its own on `backend`, keeping published rows so the standalone
/// dashboard's chart has rows to count. `None` (skip) when the server is unreachable outside
/// strict mode; SQLite is a temporary file.
pub async fn db_on(backend: Backend) -> Option<Db> {
    let suffix = unique_suffix();
    let (url, db) = match backend {
        Backend::Postgres | Backend::MySql => {
            let (var, default) = match backend {
                Backend::Postgres => ("OUTBOX_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test"),
                _ => ("OUTBOX_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
            };
            let url = test_url(var, default);
            match sea_orm::Database::connect(&url).await {
                Ok(db) => (url, db),
                Err(e) => return unreachable_server(var, &url, e),
            }
        }
        Backend::Sqlite => {
            let path = std::env::temp_dir().join(format!("outbox-dashboard-{suffix}.db"));
            let db = connect_sqlite(&path).await.expect("open SQLite");
            (format!("sqlite://{}", path.display()), db)
        }
    };
    let table = format!("dash_{suffix}");
    let config = SqlStoreConfig::default().table(table.clone()).retention(Retention::KeepPublished);
    migrate(&db, &config).await.expect("migrate");
    let store = SqlStore::new(db, config).expect("store");
    Some(Db { url, table, store })
}

/// Drops what [`db_on`] made: its tables, or the SQLite file.
pub async fn drop_db(db: &Db, backend: Backend) {
    if backend == Backend::Sqlite {
        let path = db.url.trim_start_matches("sqlite://");
        for end in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{path}{end}"));
        }
        return;
    }
    let quote = |t: &str| if backend == Backend::MySql { format!("`{t}`") } else { format!("\"{t}\"") };
    for t in [db.table.clone(), format!("{}_partitions", db.table), format!("{}_relays", db.table)] {
        let _ = db.store.connection().execute_unprepared(&format!("DROP TABLE IF EXISTS {}", quote(&t))).await;
    }
}

/// Logs in with `token`; returns the session cookie (`name=value`) and its CSRF token.
pub async fn login(http: &reqwest::Client, served: &Served, token: &str) -> (String, String) {
    let r = http.post(served.url("/login")).form(&[("token", token)]).send().await.expect("log in");
    assert_eq!(r.status(), reqwest::StatusCode::SEE_OTHER, "logged in");
    let cookie = r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let page = http.get(served.url("/dead")).header("cookie", &cookie).send().await.unwrap().text().await.unwrap();
    (cookie, csrf_in(&page).expect("a CSRF token in the forms"))
}
