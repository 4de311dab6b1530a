//! [`Inbox`]: records message ids in the handler's own transaction.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{SystemTime, UNIX_EPOCH};

use outbox_core::consumer::{HandlerError, Processed};
use outbox_core::{BoxError, Error, Result};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr, SqlErr, SqliteTransactionMode, Statement,
    TransactionOptions, TransactionTrait, Value,
};

use super::config::{InboxConfig, MAX_INBOX_ID_LEN};
use crate::error::{backend_name, from_db_err};
use crate::sql::Dialect;

/// The future an [`Inbox::process`] handler returns.
pub type InboxFuture<'c, T, E> = Pin<Box<dyn Future<Output = std::result::Result<T, E>> + Send + 'c>>;

/// Why [`Inbox::process`] failed. Either way the transaction was rolled back: the message id
/// is not recorded and a later delivery runs the handler again.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InboxError<E> {
    /// The handler returned this error.
    #[error("the inbox handler failed: {0}")]
    Handler(#[source] E),
    /// The inbox's own statements, `BEGIN` or `COMMIT` failed (classified: see
    /// [`Error::is_temporary`]). A failed `COMMIT` may still have committed; the id then
    /// makes the next delivery a duplicate, which is the point.
    #[error(transparent)]
    Store(Error),
}

impl<E> InboxError<E> {
    /// The handler's error, if that is what failed.
    pub fn handler(&self) -> Option<&E> {
        match self {
            Self::Handler(e) => Some(e),
            Self::Store(_) => None,
        }
    }
}

/// A consumer runner retries both kinds: the transaction rolled back, so nothing was done.
/// A handler that returned a [`HandlerError`] keeps its verdict: return
/// [`HandlerError::reject`] from it for a message no retry will fix.
impl<E: Into<BoxError>> From<InboxError<E>> for HandlerError {
    fn from(err: InboxError<E>) -> Self {
        match err {
            InboxError::Handler(e) => match e.into().downcast::<HandlerError>() {
                Ok(verdict) => *verdict,
                Err(other) => HandlerError::retry_from(other),
            },
            InboxError::Store(e) => HandlerError::retry_from(e),
        }
    }
}

/// The inbox table of one consumer on a SeaORM connection. Cheap to clone.
///
/// See the [module docs](super) for an example.
#[derive(Clone)]
pub struct Inbox {
    db: DatabaseConnection,
    dialect: Dialect,
    table: String,
    config: InboxConfig,
}

impl fmt::Debug for Inbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbox").field("dialect", &self.dialect).field("config", &self.config).finish_non_exhaustive()
    }
}

impl Inbox {
    /// An inbox on `db` with `config` (validated). The table must exist: see
    /// [`migrate_inbox`](super::migrate_inbox).
    pub fn new(db: DatabaseConnection, config: InboxConfig) -> Result<Self> {
        config.validate()?;
        let dialect = Dialect::of(db.get_database_backend())?;
        Ok(Self { table: dialect.quote(&config.table), db, dialect, config })
    }

    /// The connection it runs on.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Its settings.
    pub fn config(&self) -> &InboxConfig {
        &self.config
    }

    /// Processes message `id` exactly once: in one transaction, inserts `id` into the inbox,
    /// then runs `work` with the transaction and commits. When `id` is already recorded,
    /// `work` does not run and the answer is [`Processed::Duplicate`].
    ///
    /// The insert comes first, so two deliveries of one id racing on two consumers cannot
    /// both run `work`: the second insert waits on the first transaction's row and becomes a
    /// duplicate when it commits (or goes ahead when it rolls back). On SQLite the
    /// transaction is `BEGIN IMMEDIATE`, so they take turns.
    ///
    /// When `work` fails, the transaction rolls back (the id is not recorded, so a
    /// redelivery runs it again) and its error is [`InboxError::Handler`].
    pub async fn process<T, E, F>(
        &self,
        id: impl fmt::Display,
        work: F,
    ) -> std::result::Result<Processed<T>, InboxError<E>>
    where
        F: for<'c> FnOnce(&'c DatabaseTransaction) -> InboxFuture<'c, T, E> + Send,
        T: Send,
        E: Send,
    {
        let id = id.to_string();
        let txn = self.begin().await.map_err(|e| InboxError::Store(self.db_err(e)))?;
        if !self.record(&txn, &id).await.map_err(InboxError::Store)? {
            self.rollback(txn).await;
            return Ok(Processed::Duplicate);
        }
        match work(&txn).await {
            Ok(value) => {
                txn.commit().await.map_err(|e| InboxError::Store(self.db_err(e)))?;
                Ok(Processed::Done(value))
            }
            Err(e) => {
                self.rollback(txn).await;
                Err(InboxError::Handler(e))
            }
        }
    }

    /// Records `id` in `conn` (your transaction), for when you run the transaction yourself:
    /// `true` when it was new, `false` when it was already recorded (then roll back and skip
    /// the work). Only a transaction makes this exactly-once; [`process`](Self::process) is
    /// the safe form.
    pub async fn record<C: ConnectionTrait>(&self, conn: &C, id: &str) -> Result<bool> {
        if id.is_empty() || id.len() > MAX_INBOX_ID_LEN {
            return Err(Error::permanent(
                backend_name(self.dialect.backend()),
                format!("an inbox message id must be 1 to {MAX_INBOX_ID_LEN} bytes, got {}", id.len()),
                None,
            ));
        }
        let t = &self.table;
        let values: Vec<Value> = vec![self.config.consumer.clone().into(), id.into(), now_millis().into()];
        let sql = match self.dialect {
            Dialect::Postgres => {
                format!(
                    "INSERT INTO {t} (consumer, message_id, processed_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
                )
            }
            Dialect::Sqlite => {
                format!("INSERT INTO {t} (consumer, message_id, processed_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING")
            }
            // A duplicate key error leaves a MySQL transaction usable, and unlike INSERT
            // IGNORE it hides no other error.
            Dialect::MySql => format!("INSERT INTO {t} (consumer, message_id, processed_at) VALUES (?, ?, ?)"),
        };
        let stmt = Statement::from_sql_and_values(self.dialect.backend(), sql, values);
        match conn.execute_raw(stmt).await {
            Ok(done) => Ok(done.rows_affected() == 1),
            Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => Ok(false),
            Err(e) => Err(self.db_err(e)),
        }
    }

    /// Whether `id` is recorded (outside any transaction: for tests and tools).
    pub async fn contains(&self, id: impl fmt::Display) -> Result<bool> {
        let ph = |n: usize| if self.dialect == Dialect::Postgres { format!("${n}") } else { "?".to_owned() };
        let sql = format!("SELECT 1 AS one FROM {} WHERE consumer = {} AND message_id = {}", self.table, ph(1), ph(2));
        let values: Vec<Value> = vec![self.config.consumer.clone().into(), id.to_string().into()];
        let stmt = Statement::from_sql_and_values(self.dialect.backend(), sql, values);
        self.db.query_one_raw(stmt).await.map(|row| row.is_some()).map_err(|e| self.db_err(e))
    }

    pub(super) async fn begin(&self) -> std::result::Result<DatabaseTransaction, DbErr> {
        match self.dialect {
            Dialect::Sqlite => {
                let options = TransactionOptions {
                    sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                    ..TransactionOptions::default()
                };
                self.db.begin_with_options(options).await
            }
            Dialect::Postgres | Dialect::MySql => self.db.begin().await,
        }
    }

    async fn rollback(&self, txn: DatabaseTransaction) {
        // A failed rollback leaves nothing recorded either: the connection is dropped.
        if let Err(e) = txn.rollback().await {
            tracing::debug!(error = %e, "inbox rollback failed");
        }
    }

    pub(super) fn db_err(&self, err: DbErr) -> Error {
        from_db_err(self.dialect.backend(), &self.config.table, err)
    }

    pub(super) fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub(super) fn quoted_table(&self) -> &str {
        &self.table
    }
}

pub(super) fn now_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).unwrap_or(0)
}
