//! [`SqlStore`]: the relay side of the outbox table (claim, complete, fail, dead letters).
//!
//! Round trips per call: a leased claim is one `UPDATE … RETURNING` on Postgres (`FOR UPDATE
//! SKIP LOCKED` in a subquery) and SQLite; on MySQL/MariaDB, which has no `UPDATE … RETURNING`,
//! it is a short `READ COMMITTED` transaction: `SELECT … FOR UPDATE SKIP LOCKED`, one
//! `UPDATE`, `COMMIT`. A claim held in a transaction (Postgres) is one `SELECT` in a
//! transaction begun by the previous claim's commit (or a `BEGIN` first); a settle of the whole
//! claim goes with its `COMMIT` in one round trip (see [`crate::held`]). `complete` and `fail`
//! are one statement per batch everywhere.
//!
//! The parts, each depending only on this module and the ones listed before it:
//! - [`pick`]: which rows a claim may take, as SQL (claimable, head of key, sweep windows);
//! - [`decode`]: reading rows into messages, and rows that cannot be read;
//! - [`claim`]: sweeps and claims, leased (every backend) or held in a transaction (Postgres,
//!   [`crate::held`]); keyed claims from held partitions are in [`crate::partition`];
//! - [`settle`]: `complete` and `fail` statements;
//! - [`relay`] and [`admin`]: the [`OutboxStore`] and [`OutboxAdmin`] implementations.
//!
//! [`OutboxStore`]: outbox_core::OutboxStore
//! [`OutboxAdmin`]: outbox_core::OutboxAdmin

mod admin;
pub(crate) mod claim;
pub(crate) mod decode;
#[cfg(all(test, feature = "postgres"))]
mod explain_tests;
pub(crate) mod pick;
mod relay;
pub(crate) mod settle;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use outbox_core::message::duration_millis;
use outbox_core::{Error, MessageId, Notifier, Result, UnixMillis};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, QueryResult};
use uuid::Uuid;

use crate::config::{ClaimMode, SqlStoreConfig};
use crate::error::{backend_name, from_db_err};
#[cfg(feature = "postgres")]
use crate::held::{HeldClaims, MIN_POOL, PoolShare};
use crate::partition::{LeaseTables, Ownership};
use crate::schema::MAX_ERROR_LEN;
use crate::sql::{Dialect, Query};

/// An [`OutboxStore`](outbox_core::OutboxStore) on a SeaORM connection: Postgres, MySQL/MariaDB ≥ 10.6 or SQLite.
///
/// The write side is [`SqlStore::enqueue_in`] (inside your transaction) and
/// [`SqlStore::transaction`] (your work, the enqueue, commit, then notify).
///
/// ```no_run
/// # async fn run() -> outbox_core::Result<()> {
/// use std::sync::Arc;
/// use outbox_core::{MemoryBus, OutboxStore, Relay};
/// use outbox_sea_orm::{SqlStore, SqlStoreConfig, migrate};
///
/// let db = sea_orm::Database::connect("postgres://postgres@127.0.0.1/app").await.unwrap();
/// let config = SqlStoreConfig::default();
/// migrate(&db, &config).await?;
/// let store = Arc::new(SqlStore::new(db, config)?);
/// let relay = Relay::builder(store.clone(), Arc::new(MemoryBus::new())).build()?.spawn();
/// # relay.shutdown().await
/// # }
/// ```
#[derive(Clone)]
pub struct SqlStore {
    pub(crate) db: DatabaseConnection,
    pub(crate) config: SqlStoreConfig,
    pub(crate) dialect: Dialect,
    /// The table name, quoted for the dialect.
    pub(crate) table: String,
    pub(crate) notifier: Option<Arc<dyn Notifier>>,
    /// Claims held in open transactions ([`ClaimMode::Transaction`]), shared by clones.
    #[cfg(feature = "postgres")]
    pub(crate) held: Option<Arc<HeldClaims>>,
    /// When a sweep may next look past its window.
    full_sweeps: Arc<Gate>,
    /// The store's hold on key partitions; `None` with partitioning off.
    pub(crate) ownership: Option<Arc<Ownership>>,
    /// Whether the next sweep claims keyed messages before the others (they take turns,
    /// so neither kind starves the other).
    keyed_first: Arc<std::sync::atomic::AtomicBool>,
    /// Whether the last keyed claim saw a pending row without a partition (keyless, or
    /// written before partitions); while it saw none, sweeps go keyed first and skip the
    /// window sweep when their own probe finds none either.
    pub(crate) unpartitioned_pending: Arc<std::sync::atomic::AtomicBool>,
}

/// Lets one caller through per period.
#[derive(Debug, Default)]
struct Gate {
    next_at: std::sync::atomic::AtomicI64,
}

impl Gate {
    fn try_pass(&self, now: UnixMillis) -> bool {
        use std::sync::atomic::Ordering;
        let next = self.next_at.load(Ordering::Acquire);
        now >= next
            && self
                .next_at
                .compare_exchange(
                    next,
                    now.saturating_add(duration_millis(FULL_SWEEP_EVERY)),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }
}

impl fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlStore")
            .field("backend", &self.backend())
            .field("table", &self.config.table)
            .field("retention", &self.config.retention)
            .field("notify_channel", &self.config.notify_channel)
            .field("notifier", &self.notifier)
            .field("claim_mode", &self.claim_mode())
            .field("key_partitions", &self.config.key_partitions)
            .finish_non_exhaustive()
    }
}

/// How often a sweep whose window came back short may look at the whole backlog: rows
/// beyond the window are claimable then even when the window is full of parked rows (more
/// stuck rows at the bottom of the table than a window holds, or rows behind in-flight heads).
const FULL_SWEEP_EVERY: Duration = Duration::from_secs(5);

impl SqlStore {
    /// A store over `db` (any SeaORM connection pool); validates `config`.
    ///
    /// The table must exist: run [`migrate`](crate::migrate) or add
    /// [`OutboxMigration`](crate::OutboxMigration) to your migrator. A missing table shows
    /// up as [`Error::MissingSchema`] on first use.
    pub fn new(db: DatabaseConnection, config: SqlStoreConfig) -> Result<Self> {
        config.validate()?;
        let dialect = Dialect::of(db.get_database_backend())?;
        if config.notify_channel.is_some() && dialect != Dialect::Postgres {
            return Err(Error::config(
                "store.notify_channel",
                "is Postgres-only (LISTEN/NOTIFY); leave it unset on MySQL and SQLite",
            ));
        }
        let holds = match (config.claim_mode, dialect) {
            (ClaimMode::Auto, d) => d == Dialect::Postgres,
            (ClaimMode::Lease, _) => false,
            (ClaimMode::Transaction, Dialect::Postgres) => true,
            (ClaimMode::Transaction, _) => {
                return Err(Error::config(
                    "store.claim_mode",
                    "`transaction` is Postgres-only; use `lease` or `auto` on MySQL and SQLite",
                ));
            }
        };
        let table = dialect.quote(&config.table);
        #[cfg(feature = "postgres")]
        let held = if holds { Self::held_claims(&db, config.claim_mode)? } else { None };
        #[cfg(not(feature = "postgres"))]
        let _ = holds;
        let ownership = (config.key_partitions > 0).then(|| {
            let tables = LeaseTables::of(dialect, &config.table);
            Arc::new(Ownership::new(config.key_partitions, config.partition_lease_ttl, tables))
        });
        Ok(Self {
            db,
            config,
            dialect,
            table,
            notifier: None,
            #[cfg(feature = "postgres")]
            held,
            full_sweeps: Arc::default(),
            ownership,
            keyed_first: Arc::default(),
            unpartitioned_pending: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        })
    }

    /// Held claims on `db`'s pool, which they share with every other store on it: at most
    /// half of it, so they never starve the writers sharing it. A pool too small to spare a
    /// connection refuses [`ClaimMode::Transaction`] and turns [`ClaimMode::Auto`] into leases.
    #[cfg(feature = "postgres")]
    fn held_claims(db: &DatabaseConnection, mode: ClaimMode) -> Result<Option<Arc<HeldClaims>>> {
        let pool = db.get_postgres_connection_pool();
        let size = pool.options().get_max_connections();
        if size >= MIN_POOL {
            return Ok(Some(Arc::new(HeldClaims::new(PoolShare::of(pool)))));
        }
        if mode == ClaimMode::Transaction {
            return Err(Error::config(
                "store.claim_mode",
                format!(
                    "`transaction` holds a pooled connection per claim in flight and needs a pool of at least \
                     {MIN_POOL} connections (one for the claims, one for everything else); this pool has \
                     max_connections = {size}: use a bigger pool, or `lease`"
                ),
            ));
        }
        tracing::info!(
            max_connections = size,
            "the pool is too small to hold claims in transactions; claims take leases"
        );
        Ok(None)
    }

    /// The claim mode in effect: [`ClaimMode::Auto`] resolved for the backend.
    pub fn claim_mode(&self) -> ClaimMode {
        #[cfg(feature = "postgres")]
        if self.held.is_some() {
            return ClaimMode::Transaction;
        }
        ClaimMode::Lease
    }

    /// Calls `notifier` after each commit that enqueued messages ([`OutboxStore::enqueue`] and
    /// [`SqlStore::transaction`]), e.g. a [`ChannelNotifier`](outbox_core::ChannelNotifier)
    /// shared with an in-process relay.
    ///
    /// [`OutboxStore::enqueue`]: outbox_core::OutboxStore::enqueue
    pub fn with_notifier(mut self, notifier: Arc<dyn Notifier>) -> Self {
        self.notifier = Some(notifier);
        self
    }

    /// The validated configuration.
    pub fn config(&self) -> &SqlStoreConfig {
        &self.config
    }

    /// The connection pool.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// This store's id as an owner of key partitions (the `owner` column of
    /// `<table>_partitions` and `<table>_relays`); `None` with partitioning off. Clones
    /// share it; every [`SqlStore::new`] is a new owner.
    pub fn partition_owner(&self) -> Option<Uuid> {
        self.ownership.as_ref().map(|own| own.owner)
    }

    /// The backend in use: `postgres`, `mysql` or `sqlite`.
    pub fn backend(&self) -> &'static str {
        backend_name(self.dialect.backend())
    }

    pub(crate) fn db_err(&self, err: DbErr) -> Error {
        from_db_err(self.dialect.backend(), &self.config.table, err)
    }

    pub(crate) async fn execute(&self, conn: &impl ConnectionTrait, q: Query) -> Result<u64> {
        conn.execute_raw(q.build()).await.map(|r| r.rows_affected()).map_err(|e| self.db_err(e))
    }

    pub(crate) async fn fetch(&self, conn: &impl ConnectionTrait, q: Query) -> Result<Vec<QueryResult>> {
        conn.query_all_raw(q.build()).await.map_err(|e| self.db_err(e))
    }

    /// Wakes the relay's listener for `ids`, through the store's notifier (if it has one).
    ///
    /// Call it **after** committing a transaction you wrote with [`SqlStore::enqueue_in`]:
    /// before the commit the relay could not see the rows yet. [`SqlStore::begin`] and
    /// [`SqlStore::transaction`] call it for you. Skipping it loses nothing (the fallback
    /// sweep publishes the rows after `fallback.min_age`); it only costs latency. Calling it
    /// for ids that rolled back is harmless: the listener finds nothing to claim.
    ///
    /// ```no_run
    /// # async fn run(store: outbox_sea_orm::SqlStore) -> Result<(), Box<dyn std::error::Error>> {
    /// use outbox_core::NewMessage;
    /// use sea_orm::TransactionTrait;
    ///
    /// let txn = store.connection().begin().await?;
    /// let ids = store.enqueue_in(&txn, vec![NewMessage::new("orders.placed", "{}")]).await?;
    /// txn.commit().await?;
    /// store.notify_committed(&ids).await;
    /// # Ok(()) }
    /// ```
    pub async fn notify_committed(&self, ids: &[MessageId]) {
        if let Some(notifier) = &self.notifier
            && !ids.is_empty()
        {
            notifier.notify(ids).await;
        }
    }
}

pub(crate) fn limit_value(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

pub(crate) fn truncate_error(error: &str) -> String {
    if error.len() <= MAX_ERROR_LEN {
        return error.to_owned();
    }
    let mut end = MAX_ERROR_LEN;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    error[..end].to_owned()
}

pub(crate) fn age_since(now: UnixMillis, then: UnixMillis) -> Duration {
    Duration::from_millis(u64::try_from(now.saturating_sub(then)).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_errors_are_cut_at_a_char_boundary() {
        let long = "é".repeat(MAX_ERROR_LEN);
        let cut = truncate_error(&long);
        assert!(cut.len() <= MAX_ERROR_LEN && cut.len() >= MAX_ERROR_LEN - 1);
        assert_eq!(truncate_error("short"), "short");
    }
}
