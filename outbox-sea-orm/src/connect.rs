//! Connecting to a SQLite file with the settings an outbox needs.

use std::path::Path;
use std::time::Duration;

use outbox_core::Result;
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbBackend};

use crate::error::from_db_err;

/// How long a SQLite statement waits for another connection's write lock before failing.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Pool size of [`sqlite_connect_options`]: readers run in parallel under WAL, writers take
/// turns.
pub const SQLITE_MAX_CONNECTIONS: u32 = 4;

/// Connect options for the SQLite file at `path`: created if missing, WAL journal (readers
/// never block the writer), `synchronous = NORMAL` (durable at each WAL checkpoint, the usual
/// pairing with WAL), a busy timeout of [`SQLITE_BUSY_TIMEOUT`] and a pool of
/// [`SQLITE_MAX_CONNECTIONS`]. Adjust them before connecting if needed.
///
/// SQLite has one writer at a time: several relays on one file are serialised (each claim
/// takes the write lock), which suits one service, not scaling out.
pub fn sqlite_connect_options(path: impl AsRef<Path>) -> ConnectOptions {
    let path = path.as_ref().to_path_buf();
    let mut options = ConnectOptions::new(format!("sqlite://{}", path.display()));
    // The file name is set again below: the URL form mangles names with `?`, `#` or `%`.
    options.max_connections(SQLITE_MAX_CONNECTIONS).sqlx_logging(false).map_sqlx_sqlite_opts(move |o| {
        o.filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(SQLITE_BUSY_TIMEOUT)
    });
    options
}

/// Connects to the SQLite file at `path` with [`sqlite_connect_options`].
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use outbox_core::{NewMessage, OutboxStore};
/// use outbox_sea_orm::{SqlStore, SqlStoreConfig, connect_sqlite, migrate};
///
/// let path = std::env::temp_dir().join(format!("outbox-doc-{}.db", uuid::Uuid::now_v7()));
/// let db = connect_sqlite(&path).await.unwrap();
/// migrate(&db, &SqlStoreConfig::default()).await.unwrap();
/// let store = SqlStore::new(db, SqlStoreConfig::default()).unwrap();
/// store.enqueue(vec![NewMessage::new("greetings", "hello")]).await.unwrap();
/// assert_eq!(store.stats().await.unwrap().pending, 1);
/// # drop(store);
/// # let _ = std::fs::remove_file(&path);
/// # });
/// ```
pub async fn connect_sqlite(path: impl AsRef<Path>) -> Result<DatabaseConnection> {
    Database::connect(sqlite_connect_options(path)).await.map_err(|e| from_db_err(DbBackend::Sqlite, "", e))
}
