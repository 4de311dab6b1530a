//! Shared test setup: real servers, one fresh table per test.
// Each test crate uses a different part of this module.
#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use outbox_core::testkit::{test_url, unique_suffix, unreachable_server};
use outbox_core::{
    FallbackConfig, MemoryBus, MessageId, NoticeStream, Notifier, OutboxAdmin, Relay, RelayHandle, Retention,
};
use outbox_sea_orm::{ClaimMode, SqlStore, SqlStoreConfig, migrate};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};

pub const POSTGRES_VAR: &str = "OUTBOX_TEST_POSTGRES_URL";
pub const POSTGRES_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const MYSQL_VAR: &str = "OUTBOX_TEST_MYSQL_URL";
pub const MYSQL_DEFAULT: &str = "mysql://root@127.0.0.1:3306/test";

/// Test tables and files older than this are dropped by later runs.
const STALE_AFTER_SECS: u64 = 3600;
const PREFIX: &str = "outbox_test_";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    MySql,
    Sqlite,
}

impl Backend {
    /// The backend `db` talks to.
    pub fn of(db: &DatabaseConnection) -> Self {
        match db.get_database_backend() {
            DbBackend::Postgres => Self::Postgres,
            DbBackend::MySql => Self::MySql,
            _ => Self::Sqlite,
        }
    }

    /// `name` quoted as an identifier.
    pub fn quote(self, name: &str) -> String {
        if self == Self::MySql { format!("`{name}`") } else { format!("\"{name}\"") }
    }
}

fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A unique table name that carries its creation time, so stale ones can be dropped.
pub fn unique_table() -> String {
    format!("{PREFIX}{}_{}", unix_secs(), unique_suffix())
}

fn is_stale(name: &str) -> bool {
    let secs = name.strip_prefix(PREFIX).and_then(|rest| rest.split('_').next()).and_then(|s| s.parse::<u64>().ok());
    secs.is_some_and(|s| s + STALE_AFTER_SECS < unix_secs())
}

pub fn url_of(backend: Backend) -> (&'static str, String) {
    match backend {
        Backend::Postgres => (POSTGRES_VAR, test_url(POSTGRES_VAR, POSTGRES_DEFAULT)),
        Backend::MySql => (MYSQL_VAR, test_url(MYSQL_VAR, MYSQL_DEFAULT)),
        Backend::Sqlite => ("", String::new()),
    }
}

/// A pool on the backend's test server (SQLite: a new temp file), or `None` when the server
/// is unreachable and the run is not strict.
pub async fn connect(backend: Backend) -> Option<DatabaseConnection> {
    if backend == Backend::Sqlite {
        return Some(sqlite_file().await);
    }
    let (var, url) = url_of(backend);
    let mut options = ConnectOptions::new(url.clone());
    options.max_connections(8).acquire_timeout(Duration::from_secs(30)).sqlx_logging(false);
    match Database::connect(options).await {
        Ok(db) => {
            drop_stale_tables(&db).await;
            Some(db)
        }
        Err(e) => unreachable_server(var, &url, e),
    }
}

/// A store on a fresh, migrated table.
pub async fn store(backend: Backend, config: SqlStoreConfig) -> Option<SqlStore> {
    let db = connect(backend).await?;
    let config = config.table(unique_table());
    migrate(&db, &config).await.expect("migrate");
    Some(SqlStore::new(db, config).expect("valid store config"))
}

/// The conformance setup: `None` (the case is skipped) when the server is unreachable and
/// the run is not strict.
pub async fn conformance_store(
    backend: Backend,
    retention: Retention,
    mode: ClaimMode,
) -> Option<Arc<dyn OutboxAdmin>> {
    let store = store(backend, SqlStoreConfig::default().retention(retention).claim_mode(mode)).await?;
    Some(Arc::new(store))
}

#[cfg(feature = "sqlite")]
async fn sqlite_file() -> DatabaseConnection {
    let dir = std::env::temp_dir().join("outbox-sea-orm-tests");
    std::fs::create_dir_all(&dir).expect("temp dir");
    remove_stale_files(&dir);
    let path = dir.join(format!("{}.db", unique_table()));
    outbox_sea_orm::connect_sqlite(&path).await.expect("open sqlite file")
}

#[cfg(not(feature = "sqlite"))]
async fn sqlite_file() -> DatabaseConnection {
    unreachable!("SQLite tests need the `sqlite` feature")
}

async fn drop_stale_tables(db: &DatabaseConnection) {
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => {
            "SELECT tablename AS name FROM pg_tables WHERE schemaname = current_schema() AND tablename LIKE 'outbox\\_test\\_%'"
        }
        _ => {
            "SELECT table_name AS name FROM information_schema.tables \
             WHERE table_schema = DATABASE() AND table_name LIKE 'outbox\\_test\\_%'"
        }
    };
    let Ok(rows) = db.query_all_raw(Statement::from_string(backend, sql)).await else { return };
    for row in rows {
        let Ok(name) = row.try_get::<String>("", "name") else { continue };
        if is_stale(&name) {
            let quoted = if backend == DbBackend::MySql { format!("`{name}`") } else { format!("\"{name}\"") };
            let _ = db.execute_unprepared(&format!("DROP TABLE IF EXISTS {quoted}")).await;
        }
    }
}

fn remove_stale_files(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_str().is_some_and(is_stale) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A relay on `store` with only the fallback (no minimum age, a sweep every 100 ms) and a
/// [`MemoryBus`] to publish to.
pub fn fallback_relay(store: &SqlStore) -> (RelayHandle, Arc<MemoryBus>) {
    let bus = Arc::new(MemoryBus::new());
    let fallback = FallbackConfig::default().min_age(Duration::ZERO).interval(Duration::from_millis(100));
    let relay = Relay::builder(Arc::new(store.clone()), bus.clone())
        .without_listener()
        .fallback(fallback)
        .build()
        .expect("a valid relay")
        .spawn();
    (relay, bus)
}

/// Records every `notify` call.
#[derive(Debug, Default)]
pub struct RecordingNotifier {
    calls: Mutex<Vec<Vec<MessageId>>>,
}

impl RecordingNotifier {
    pub fn calls(&self) -> Vec<Vec<MessageId>> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait]
impl Notifier for RecordingNotifier {
    async fn notify(&self, ids: &[MessageId]) {
        self.calls.lock().unwrap().push(ids.to_vec());
    }
    async fn subscribe(&self) -> outbox_core::Result<NoticeStream> {
        Ok(Box::pin(futures::stream::pending()))
    }
}

/// One test per case and backend compiled in: `per_backend!(setup => case, …)` runs
/// `case(setup(backend).await)` and skips when `setup` gives `None` (no server); `setup` is a
/// function of the calling file. Without `setup =>`, a case gets a [`store`] with the default
/// config.
#[macro_export]
macro_rules! per_backend {
    ($setup:ident => $($case:ident),* $(,)?) => {
        $crate::per_backend!(@all [super::$setup] $($case),*);
    };
    ($($case:ident),* $(,)?) => {
        $crate::per_backend!(@all [$crate::common::default_store] $($case),*);
    };
    (@all [$setup:path] $($case:ident),*) => {
        $crate::per_backend!(@one postgres, "postgres", Postgres, [$setup] $($case),*);
        $crate::per_backend!(@one mysql, "mysql", MySql, [$setup] $($case),*);
        $crate::per_backend!(@one sqlite, "sqlite", Sqlite, [$setup] $($case),*);
    };
    (@one $module:ident, $feature:literal, $backend:ident, [$setup:path] $($case:ident),*) => {
        #[cfg(feature = $feature)]
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    if let Some(given) = $setup($crate::common::Backend::$backend).await {
                        super::$case(given).await;
                    }
                }
            )*
        }
    };
}

/// A store with the default config on `backend` (see [`store`]).
pub async fn default_store(backend: Backend) -> Option<SqlStore> {
    store(backend, SqlStoreConfig::default()).await
}

/// `backend` itself, for cases that connect on their own.
pub async fn just(backend: Backend) -> Option<Backend> {
    Some(backend)
}

/// `n` pools of one connection each on `backend`'s test server (SQLite: one new file), so
/// their statements really run in parallel; `None` (skip) as [`connect`] says.
pub async fn separate_connections(backend: Backend, n: usize) -> Option<Vec<DatabaseConnection>> {
    let mut dbs = Vec::with_capacity(n);
    #[cfg(feature = "sqlite")]
    if backend == Backend::Sqlite {
        let dir = std::env::temp_dir().join("outbox-sea-orm-tests");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{}.db", unique_table()));
        for _ in 0..n {
            dbs.push(outbox_sea_orm::connect_sqlite(&path).await.unwrap());
        }
        return Some(dbs);
    }
    connect(backend).await?;
    let (_, url) = url_of(backend);
    for _ in 0..n {
        let mut options = ConnectOptions::new(url.clone());
        options.max_connections(1).min_connections(1).acquire_timeout(Duration::from_secs(30)).sqlx_logging(false);
        dbs.push(Database::connect(options).await.unwrap());
    }
    Some(dbs)
}

/// Turns the freshly migrated `table` into one made before key partitions (no
/// `partition_no`, no partition index, no lease tables) holding `n` pending rows as the old
/// enqueue wrote them, keyed `key-{i % keys}`, payload `i`.
pub async fn make_pre_partition_table(db: &DatabaseConnection, table: &str, n: usize, keys: usize) {
    let backend = Backend::of(db);
    let t = backend.quote(table);
    for ddl in [
        format!("DROP TABLE {}", backend.quote(&format!("{table}_partitions"))),
        format!("DROP TABLE {}", backend.quote(&format!("{table}_relays"))),
        if backend == Backend::MySql {
            format!("DROP INDEX `{table}_part_idx` ON {t}")
        } else {
            format!("DROP INDEX {}", backend.quote(&format!("{table}_part_idx")))
        },
        format!("ALTER TABLE {t} DROP COLUMN partition_no"),
    ] {
        db.execute_unprepared(&ddl).await.unwrap();
    }
    let uuid = |id: uuid::Uuid| {
        if backend == Backend::Postgres { format!("'{id}'") } else { format!("X'{}'", id.simple()) }
    };
    let payload = |i: usize| match backend {
        Backend::Postgres => format!("convert_to('{i}', 'UTF8')"),
        _ => format!("X'{}'", i.to_string().bytes().map(|b| format!("{b:02x}")).collect::<String>()),
    };
    let rows: Vec<String> = (0..n)
        .map(|i| {
            format!("({}, 'parts', 'key-{}', {}, '{{}}', 0, 0, 0, 0)", uuid(uuid::Uuid::now_v7()), i % keys, payload(i))
        })
        .collect();
    db.execute_unprepared(&format!(
        "INSERT INTO {t} (id, topic, msg_key, payload, headers, status, attempts, created_at, available_at) VALUES {}",
        rows.join(", ")
    ))
    .await
    .unwrap();
}
