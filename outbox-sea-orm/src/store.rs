//! [`SqlStore`]: the relay side of the outbox table (claim, complete, fail, dead letters).
//!
//! Round trips per call: a leased claim is one `UPDATE … RETURNING` on Postgres (`FOR UPDATE
//! SKIP LOCKED` in a subquery) and SQLite; on MySQL/MariaDB, which has no `UPDATE … RETURNING`,
//! it is a short `READ COMMITTED` transaction: `SELECT … FOR UPDATE SKIP LOCKED`, one
//! `UPDATE`, `COMMIT`. A claim held in a transaction (Postgres) is one `SELECT` in a
//! transaction begun by the previous claim's commit (or a `BEGIN` first); a settle of the whole
//! claim goes with its `COMMIT` in one round trip (see [`crate::held`]). `complete` and `fail`
//! are one statement per batch everywhere.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use outbox_core::message::{duration_millis, now_millis};
use outbox_core::{
    DeadLetter, DeadLetterQuery, Disposition, Error, Failure, Lease, MessageId, NewMessage, Notifier, OutboxAdmin,
    OutboxMessage, OutboxStats, OutboxStore, ReplaySelector, Result, Retention, UnixMillis,
};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, IsolationLevel, QueryResult, TransactionTrait};
use uuid::Uuid;

use crate::config::{ClaimMode, SqlStoreConfig};
use crate::decode::{Row, Unreadable};
use crate::error::{backend_name, from_db_err};
#[cfg(feature = "postgres")]
use crate::held::{HeldClaims, MIN_POOL, PoolShare, Prepared};
use crate::partition::{LeaseTables, Ownership};
use crate::schema::{MAX_ERROR_LEN, MESSAGE_COLUMNS};
use crate::sql::{Dialect, Query, Tid};

/// Ids per statement when they go into an `IN (…)` list (SQLite allows 32,766 binds).
const MAX_IDS_PER_STATEMENT: usize = 4_000;

/// An [`OutboxStore`] on a SeaORM connection: Postgres, MySQL/MariaDB ≥ 10.6 or SQLite.
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

/// Which rows a claim may take, besides being claimable.
#[derive(Clone, Copy)]
pub(crate) enum Pick<'a> {
    Ids(&'a [MessageId]),
    /// Keyed rows of held partitions, by `seq`: the heads [`crate::partition`] found.
    Heads {
        seqs: &'a [i64],
        created_before: UnixMillis,
        limit: usize,
    },
    /// Rows without a partition (all rows, with partitioning off).
    /// `window`: only rows whose `seq` is within this many of the sweep's start
    /// ([`SqlStore::push_window_start`]).
    Due {
        created_before: UnixMillis,
        limit: usize,
        window: Option<i64>,
    },
}

/// Claims by id of at least this many messages are held in a transaction
/// ([`ClaimMode::Transaction`]); smaller ones take a lease.
#[cfg(feature = "postgres")]
const HOLD_FROM_IDS: usize = 32;

/// A sweep looks this many `seq`s past its start (at least; 10 × its limit if more): the
/// first pending row that is not stuck, found among this many oldest pending rows. Rows
/// blocked behind an in-flight head of their key cost an index probe each; the window keeps a
/// sweep that finds nothing from walking the whole backlog to say so.
const SWEEP_WINDOW: i64 = 10_000;

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

    /// `c` is claimable: pending, due, not under a live claim, and the head of its key; and
    /// not among `held`, rows this claim's own transaction already locked (its own locks do
    /// not make `SKIP LOCKED` skip them).
    pub(crate) fn push_claimable(&self, q: &mut Query, now: UnixMillis, pick: Pick<'_>, held: &[Tid]) {
        q.push(" WHERE c.status = 0 AND c.available_at <= ")
            .bind(now)
            .push(" AND (c.claimed_until IS NULL OR c.claimed_until <= ")
            .bind(now)
            .push(") AND (c.msg_key IS NULL OR NOT EXISTS (SELECT 1 FROM ")
            .push(&self.table)
            .push(" p WHERE p.msg_key = c.msg_key AND p.seq < c.seq AND p.status IN (0, 2)))");
        #[cfg(feature = "postgres")]
        if !held.is_empty() {
            q.push(" AND NOT ").tid_in("c.ctid", held);
        }
        #[cfg(not(feature = "postgres"))]
        let _ = held;
        match pick {
            Pick::Ids(ids) => {
                q.push(" AND ").uuid_in("c.id", ids.iter().map(|id| id.as_uuid()));
                self.push_held_partition(q, now);
            }
            Pick::Heads { seqs, created_before, limit } => {
                q.push(" AND ").i64_in("c.seq", seqs.iter().copied());
                Self::push_old_enough(q, created_before);
                self.push_held_partition(q, now);
                q.push(" ORDER BY c.seq LIMIT ").bind(limit_value(limit));
            }
            Pick::Due { created_before, limit, window } => {
                if self.ownership.is_some() {
                    q.push(" AND c.partition_no IS NULL");
                }
                Self::push_old_enough(q, created_before);
                match window {
                    // `lo` is where the window starts ([`SqlStore::push_window_start`]).
                    Some(len) if self.dialect == Dialect::Postgres => {
                        q.push(" AND c.seq >= (SELECT m FROM lo) AND c.seq < (SELECT m FROM lo) + ").bind(len);
                    }
                    // The scan starts at the oldest pending row; the rows before the window's
                    // start are few, and each fails its head-of-key probe.
                    Some(len) => {
                        q.push(" AND c.seq < ");
                        self.push_window_start(q, now, len);
                        q.push(" + ").bind(len);
                    }
                    None => {}
                }
                q.push(" ORDER BY c.seq LIMIT ").bind(limit_value(limit));
            }
        }
    }

    /// A sweep's age rule: retries and expired claims need only be due, new rows must have
    /// been created by `created_before`.
    fn push_old_enough(q: &mut Query, created_before: UnixMillis) {
        q.push(" AND (c.attempts > 0 OR c.claimed_until IS NOT NULL OR c.created_at <= ")
            .bind(created_before)
            .push(")");
    }

    /// With partitioning: the row has no partition, or this store holds its partition now.
    /// Checked in the claim itself, so a store whose hold lapsed cannot claim from it.
    fn push_held_partition(&self, q: &mut Query, now: UnixMillis) {
        if let Some(own) = &self.ownership {
            q.push(" AND (c.partition_no IS NULL OR EXISTS (SELECT 1 FROM ")
                .push(&own.leases_table)
                .push(" l WHERE l.partition_no = c.partition_no AND l.owner = ")
                .bind(own.owner)
                .push(" AND l.lease_until > ")
                .bind(now)
                .push("))");
        }
    }

    /// Starts a Postgres claim of a windowed sweep with `WITH lo AS (…)`: where the window
    /// starts, for [`push_claimable`](Self::push_claimable) to bound its scan on both sides.
    /// Referenced twice, the CTE is computed once, and the scan starts at a live row: deleted
    /// rows not yet vacuumed are walked once per claim rather than twice (a quarter of a
    /// claim's time while a backlog drains).
    pub(crate) fn push_window_cte(&self, q: &mut Query, pick: Pick<'_>, now: UnixMillis) {
        if let (Dialect::Postgres, Pick::Due { window: Some(len), .. }) = (self.dialect, pick) {
            q.push("WITH lo AS (SELECT ");
            self.push_window_start(q, now, len);
            q.push(" AS m) ");
        }
    }

    /// Where a sweep's window starts: the first of the `len` oldest pending rows that is not
    /// stuck, or the row after them all. A stuck row cannot be claimed soon, whatever else is
    /// settled: it waits behind a dead row of its key, or it or an earlier row of its key is
    /// backing off. Starting at the oldest pending row instead, one dead head with a waiting
    /// successor would pin the window while newer rows move past its end. Rows behind an
    /// in-flight head are not stuck: they follow as soon as it settles. (`d.status IN (0, 2)`
    /// lets Postgres use its partial head-of-key index.)
    fn push_window_start(&self, q: &mut Query, now: UnixMillis, len: i64) {
        let t = &self.table;
        let unpartitioned = if self.ownership.is_some() { " AND w.partition_no IS NULL" } else { "" };
        q.push("COALESCE((SELECT s.seq FROM (SELECT w.seq, w.msg_key, w.available_at FROM ")
            .push(t)
            .push(" w WHERE w.status = 0")
            .push(unpartitioned)
            .push(" ORDER BY w.seq LIMIT ")
            .bind(len)
            .push(") s WHERE s.available_at <= ")
            .bind(now)
            .push(" AND (s.msg_key IS NULL OR NOT EXISTS (SELECT 1 FROM ")
            .push(t)
            .push(" d WHERE d.msg_key = s.msg_key AND d.seq < s.seq AND d.status IN (0, 2) AND (d.status = 2 OR ")
            .push("d.available_at > ")
            .bind(now)
            .push("))) ORDER BY s.seq LIMIT 1), (SELECT MAX(s.seq) + 1 FROM (SELECT w.seq FROM ")
            .push(t)
            .push(" w WHERE w.status = 0")
            .push(unpartitioned)
            .push(" ORDER BY w.seq LIMIT ")
            .bind(len)
            .push(") s))");
    }

    /// A sweep: keyed messages from the held partitions and the others, taking turns at
    /// going first; a failure of the second part keeps what the first claimed.
    async fn sweep(&self, created_before: UnixMillis, limit: usize, lease: &Lease) -> Result<Vec<OutboxMessage>> {
        use std::sync::atomic::Ordering;
        let claimed = if self.ownership.is_none() {
            self.sweep_unpartitioned(created_before, limit, lease).await?
        } else {
            let keyed_first = !self.keyed_first.fetch_xor(true, Ordering::Relaxed);
            let mut claimed = if keyed_first {
                self.claim_keyed(created_before, limit, lease).await?
            } else {
                self.sweep_unpartitioned(created_before, limit, lease).await?
            };
            let rest = limit - claimed.len();
            if rest > 0 {
                let more = if keyed_first {
                    self.sweep_unpartitioned(created_before, rest, lease).await
                } else {
                    self.claim_keyed(created_before, rest, lease).await
                };
                match more {
                    Ok(more) => claimed.extend(more),
                    Err(error) if !claimed.is_empty() => tracing::debug!(%error, "half a sweep failed"),
                    Err(error) => return Err(error),
                }
            }
            claimed
        };
        #[cfg(feature = "postgres")]
        if let Some(held) = &self.held {
            held.set_idle(claimed.is_empty());
        }
        Ok(claimed)
    }

    /// A sweep of rows without a partition: the window first, the whole backlog when that
    /// came back short and the last full sweep is [`FULL_SWEEP_EVERY`] ago.
    async fn sweep_unpartitioned(
        &self,
        created_before: UnixMillis,
        limit: usize,
        lease: &Lease,
    ) -> Result<Vec<OutboxMessage>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let window = SWEEP_WINDOW.max(limit_value(limit).saturating_mul(10));
        let mut claimed = self.claim(Pick::Due { created_before, limit, window: Some(window) }, lease).await?;
        if claimed.len() < limit && self.full_sweeps.try_pass(now_millis()) {
            let rest = Pick::Due { created_before, limit: limit - claimed.len(), window: None };
            match self.claim(rest, lease).await {
                Ok(more) => claimed.extend(more),
                // What the window claimed is the caller's to publish.
                Err(error) if !claimed.is_empty() => tracing::debug!(%error, "a full sweep failed"),
                Err(error) => return Err(error),
            }
        }
        Ok(claimed)
    }

    pub(crate) async fn claim(&self, pick: Pick<'_>, lease: &Lease) -> Result<Vec<OutboxMessage>> {
        let now = now_millis();
        #[cfg(feature = "postgres")]
        let held_rows = match &self.held {
            Some(held) if Self::worth_holding(held, pick) => self.claim_held(held, pick, lease, now).await?,
            _ => None,
        };
        #[cfg(not(feature = "postgres"))]
        let held_rows = None;
        let mut rows = match held_rows {
            Some(rows) => rows,
            None => self.claim_leased(pick, lease, now).await?,
        };
        rows.sort_by_key(|r| r.seq);
        Ok(rows.into_iter().map(|r| r.message).collect())
    }

    /// A held claim saves a row version per message and, while a relay is busy, costs the
    /// round trips of a lease (its `BEGIN` rides on the previous claim's `COMMIT`); without a
    /// kept transaction it costs one more, and it pins a connection. It pays off for big
    /// batches. Small claims by id (the listener at low rates, where latency counts) and
    /// sweeps that keep finding nothing take leases.
    #[cfg(feature = "postgres")]
    fn worth_holding(held: &HeldClaims, pick: Pick<'_>) -> bool {
        match pick {
            Pick::Ids(ids) => ids.len() >= HOLD_FROM_IDS,
            Pick::Heads { .. } | Pick::Due { .. } => !held.idle(),
        }
    }

    /// A claim that writes a lease on its rows (one statement; a short transaction on MySQL).
    async fn claim_leased(&self, pick: Pick<'_>, lease: &Lease, now: UnixMillis) -> Result<Vec<Row>> {
        let until = now.saturating_add(duration_millis(lease.ttl));
        match self.dialect {
            Dialect::MySql => self.claim_in_transaction(pick, lease, now, until).await,
            Dialect::Postgres | Dialect::Sqlite => {
                let q = self.claim_update(pick, lease, now, until);
                let (rows, unreadable) = self.readable(&self.fetch(&self.db, q).await?)?;
                self.dead_letter_unreadable(&self.db, &unreadable, Some(lease), now).await?;
                Ok(rows)
            }
        }
    }

    /// Postgres / SQLite: claim in one `UPDATE … RETURNING`.
    fn claim_update(&self, pick: Pick<'_>, lease: &Lease, now: UnixMillis, until: UnixMillis) -> Query {
        let mut q = Query::new(self.dialect);
        self.push_window_cte(&mut q, pick, now);
        q.push("UPDATE ")
            .push(&self.table)
            .push(" SET claimed_until = ")
            .bind(until)
            .push(", claim_token = ")
            .bind(lease.token)
            .push(" WHERE seq IN (SELECT c.seq FROM ")
            .push(&self.table)
            .push(" c");
        self.push_claimable(&mut q, now, pick, &[]);
        if self.dialect == Dialect::Postgres {
            q.push(" FOR UPDATE OF c SKIP LOCKED");
        }
        q.push(")");
        if self.dialect == Dialect::Postgres {
            // The claim commits without waiting for its WAL flush: a lease lost in a database
            // crash only lets the rows be claimed again (a duplicate, which dedup removes).
            q.push(" AND (SELECT set_config('synchronous_commit', 'off', true)) IS NOT NULL");
        }
        q.push(" RETURNING ").push(MESSAGE_COLUMNS);
        q
    }

    /// MySQL/MariaDB: lock the rows, then mark them. READ COMMITTED keeps the locking read
    /// from holding locks (and gap locks) on rows it scanned but did not claim.
    async fn claim_in_transaction(
        &self,
        pick: Pick<'_>,
        lease: &Lease,
        now: UnixMillis,
        until: UnixMillis,
    ) -> Result<Vec<Row>> {
        let txn =
            self.db.begin_with_config(Some(IsolationLevel::ReadCommitted), None).await.map_err(|e| self.db_err(e))?;
        let mut q = Query::new(self.dialect);
        q.push("SELECT ").push(MESSAGE_COLUMNS).push(" FROM ").push(&self.table).push(" c");
        self.push_claimable(&mut q, now, pick, &[]);
        q.push(" FOR UPDATE SKIP LOCKED");
        let (rows, unreadable) = self.readable(&self.fetch(&txn, q).await?)?;
        self.dead_letter_unreadable(&txn, &unreadable, None, now).await?;
        if !rows.is_empty() {
            let mut q = Query::new(self.dialect);
            q.push("UPDATE ")
                .push(&self.table)
                .push(" SET claimed_until = ")
                .bind(until)
                .push(", claim_token = ")
                .bind(lease.token)
                .push(" WHERE seq IN (");
            for (i, row) in rows.iter().enumerate() {
                if i > 0 {
                    q.push(", ");
                }
                q.bind(row.seq);
            }
            q.push(")");
            self.execute(&txn, q).await?;
        }
        txn.commit().await.map_err(|e| self.db_err(e))?;
        Ok(rows)
    }

    /// The claimed rows that can be published, and those that cannot be read (to dead-letter).
    fn readable(&self, found: &[QueryResult]) -> Result<(Vec<Row>, Vec<Unreadable>)> {
        let (mut rows, mut unreadable) = (Vec::with_capacity(found.len()), Vec::new());
        for row in found {
            match self.claimed(self.decode(row))? {
                Ok(row) => rows.push(row),
                Err(bad) => unreadable.push(bad),
            }
        }
        Ok((rows, unreadable))
    }

    /// Dead-letters claimed rows that cannot be read, on `conn` (in the claim's transaction,
    /// if it has one; under `lease` otherwise).
    async fn dead_letter_unreadable(
        &self,
        conn: &impl ConnectionTrait,
        unreadable: &[Unreadable],
        lease: Option<&Lease>,
        now: UnixMillis,
    ) -> Result<()> {
        for bad in unreadable {
            bad.log();
            self.execute(conn, self.dead_letter_query(bad, lease, now)).await?;
        }
        Ok(())
    }

    /// Dead-letters a claimed row that cannot be read: attempts + 1, and why as its last error.
    pub(crate) fn dead_letter_query(&self, bad: &Unreadable, lease: Option<&Lease>, now: UnixMillis) -> Query {
        let mut q = Query::new(self.dialect);
        q.push("UPDATE ")
            .push(&self.table)
            .push(" SET status = 2, attempts = attempts + 1, last_error = ")
            .bind(truncate_error(&bad.reason))
            .push(", finished_at = ")
            .bind(now)
            .push(", claimed_until = NULL, claim_token = NULL WHERE seq = ")
            .bind(bad.seq);
        Self::push_held_by(&mut q, lease, now);
        q
    }

    /// `AND claim_token = … AND claimed_until > now AND status = 0`: the lease still holds.
    /// Without a lease (rows locked by a held claim) only `status = 0`.
    fn push_held_by(q: &mut Query, lease: Option<&Lease>, now: UnixMillis) {
        if let Some(lease) = lease {
            q.push(" AND claim_token = ").bind(lease.token).push(" AND claimed_until > ").bind(now);
        }
        q.push(" AND status = 0");
    }

    /// Marks `rows` published (deletes them, or keeps them as status 1).
    fn complete_query(&self, rows: Rows<'_>, lease: Option<&Lease>, now: UnixMillis) -> Query {
        let mut q = Query::new(self.dialect);
        match self.config.retention {
            Retention::Delete => q.push("DELETE FROM ").push(&self.table).push(" WHERE "),
            Retention::KeepPublished => q
                .push("UPDATE ")
                .push(&self.table)
                .push(" SET status = 1, finished_at = ")
                .bind(now)
                .push(", claimed_until = NULL, claim_token = NULL WHERE "),
        };
        match rows {
            Rows::Ids(ids) => q.uuid_in("id", ids.iter().map(|id| id.as_uuid())),
            #[cfg(feature = "postgres")]
            Rows::Tids(tids) => q.tid_in("ctid", tids),
        };
        Self::push_held_by(&mut q, lease, now);
        q
    }

    /// One `UPDATE` that records `failures`: attempts + 1, last error, and a retry time or
    /// the dead-letter state.
    fn fail_query(&self, failures: &[Failure], lease: Option<&Lease>, now: UnixMillis) -> Query {
        #[cfg(feature = "postgres")]
        if self.dialect == Dialect::Postgres {
            return self.fail_query_postgres(failures, lease, now);
        }
        // CASE expressions give each message its own values.
        let mut q = Query::new(self.dialect);
        q.push("UPDATE ").push(&self.table).push(" SET attempts = attempts + 1, last_error = CASE id");
        for f in failures {
            q.push(" WHEN ").bind(f.id.as_uuid()).push(" THEN ").bind(truncate_error(&f.error));
        }
        q.push(" END");
        let retries: Vec<_> = failures
            .iter()
            .filter_map(|f| match f.disposition {
                Disposition::RetryAfter(d) => Some((f.id, now.saturating_add(duration_millis(d)))),
                Disposition::DeadLetter => None,
            })
            .collect();
        if !retries.is_empty() {
            q.push(", available_at = CASE id");
            for (id, at) in &retries {
                q.push(" WHEN ").bind(id.as_uuid()).push(" THEN ").bind(*at);
            }
            q.push(" ELSE available_at END");
        }
        let dead: Vec<Uuid> =
            failures.iter().filter(|f| f.disposition == Disposition::DeadLetter).map(|f| f.id.as_uuid()).collect();
        if !dead.is_empty() {
            q.push(", status = CASE WHEN ").uuid_in("id", dead.iter().copied()).push(" THEN 2 ELSE status END");
            q.push(", finished_at = CASE WHEN ")
                .uuid_in("id", dead.iter().copied())
                .push(" THEN ")
                .bind(now)
                .push(" ELSE finished_at END");
        }
        q.push(", claimed_until = NULL, claim_token = NULL WHERE ")
            .uuid_in("id", failures.iter().map(|f| f.id.as_uuid()));
        Self::push_held_by(&mut q, lease, now);
        q
    }

    /// Postgres: the per-message values travel as arrays, so the SQL text is the same for
    /// every batch size and its prepared statement is reused.
    #[cfg(feature = "postgres")]
    fn fail_query_postgres(&self, failures: &[Failure], lease: Option<&Lease>, now: UnixMillis) -> Query {
        use crate::schema::status;

        let ids: Vec<Uuid> = failures.iter().map(|f| f.id.as_uuid()).collect();
        let errors: Vec<String> = failures.iter().map(|f| truncate_error(&f.error)).collect();
        let statuses: Vec<i16> = failures
            .iter()
            .map(|f| if f.disposition == Disposition::DeadLetter { status::DEAD } else { status::PENDING })
            .collect();
        let available: Vec<i64> = failures
            .iter()
            .map(|f| match f.disposition {
                Disposition::RetryAfter(d) => now.saturating_add(duration_millis(d)),
                Disposition::DeadLetter => now,
            })
            .collect();
        let mut q = Query::new(self.dialect);
        q.push("UPDATE ")
            .push(&self.table)
            .push(" AS t SET attempts = t.attempts + 1, last_error = f.error, status = f.status, ")
            .push("available_at = CASE WHEN f.status = 2 THEN t.available_at ELSE f.available_at END, ")
            .push("finished_at = CASE WHEN f.status = 2 THEN ")
            .bind(now)
            .push(" ELSE t.finished_at END, claimed_until = NULL, claim_token = NULL FROM unnest(")
            .bind(ids)
            .push("::uuid[], ")
            .bind(errors)
            .push("::text[], ")
            .bind(statuses)
            .push("::smallint[], ")
            .bind(available)
            .push("::bigint[]) AS f(id, error, status, available_at) WHERE t.id = f.id");
        if let Some(lease) = lease {
            q.push(" AND t.claim_token = ").bind(lease.token).push(" AND t.claimed_until > ").bind(now);
        }
        q.push(" AND t.status = 0");
        q
    }
}

/// Rows to settle: by message id, or by `ctid` when a held claim has them locked.
#[derive(Clone, Copy)]
enum Rows<'a> {
    Ids(&'a [MessageId]),
    #[cfg(feature = "postgres")]
    Tids(&'a [Tid]),
}

fn limit_value(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn truncate_error(error: &str) -> String {
    if error.len() <= MAX_ERROR_LEN {
        return error.to_owned();
    }
    let mut end = MAX_ERROR_LEN;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    error[..end].to_owned()
}

fn age_since(now: UnixMillis, then: UnixMillis) -> Duration {
    Duration::from_millis(u64::try_from(now.saturating_sub(then)).unwrap_or(0))
}

#[async_trait]
impl OutboxStore for SqlStore {
    /// Auto-commit enqueue: one statement (a transaction when MySQL/SQLite need several
    /// statements for a very large batch), then the store's notifier, if any.
    async fn enqueue(&self, messages: Vec<NewMessage>) -> Result<Vec<MessageId>> {
        let ids = if self.fits_one_insert(messages.len()) {
            self.enqueue_in(&self.db, messages).await?
        } else {
            let txn = self.begin_write().await?;
            let ids = self.enqueue_in(&txn, messages).await?;
            txn.commit().await.map_err(|e| self.db_err(e))?;
            ids
        };
        self.notify_committed(&ids).await;
        Ok(ids)
    }

    async fn claim_ids(&self, ids: &[MessageId], lease: &Lease) -> Result<Vec<OutboxMessage>> {
        // Renews the hold on partitions when due; the claim checks it in SQL.
        let _ = self.held_partitions().await;
        let mut claimed = Vec::new();
        for chunk in ids.chunks(MAX_IDS_PER_STATEMENT) {
            claimed.extend(self.claim(Pick::Ids(chunk), lease).await?);
        }
        if let Some(own) = &self.ownership {
            own.claimed(&claimed, now_millis().saturating_add(duration_millis(lease.ttl)));
        }
        Ok(claimed)
    }

    /// Rows locked by a held claim carry no lease, so they count as retryable: the listener
    /// then retries them a bounded number of times.
    async fn retryable_among(&self, ids: &[MessageId]) -> Result<Vec<MessageId>> {
        let now = now_millis();
        let mut retryable = Vec::new();
        for chunk in ids.chunks(MAX_IDS_PER_STATEMENT) {
            let mut q = Query::new(self.dialect);
            q.push("SELECT c.id FROM ")
                .push(&self.table)
                .push(" c WHERE c.status = 0 AND (c.claimed_until IS NULL OR c.claimed_until <= ")
                .bind(now)
                .push(") AND ")
                .uuid_in("c.id", chunk.iter().map(|id| id.0));
            // Rows of partitions another relay holds are that relay's to publish.
            self.push_held_partition(&mut q, now);
            for row in self.fetch(&self.db, q).await? {
                retryable.push(MessageId(row.try_get_by_index::<Uuid>(0).map_err(|e| self.db_err(e))?));
            }
        }
        Ok(retryable)
    }

    async fn claim_due(&self, limit: usize, min_age: Duration, lease: &Lease) -> Result<Vec<OutboxMessage>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let created_before = now_millis().saturating_sub(duration_millis(min_age));
        self.sweep(created_before, limit, lease).await
    }

    async fn complete(&self, ids: &[MessageId], lease: &Lease) -> Result<u64> {
        if let Some(own) = &self.ownership {
            own.settled(ids.iter().copied());
        }
        let now = now_millis();
        let mut done = 0;
        #[cfg(feature = "postgres")]
        let rest = match &self.held {
            Some(held) => {
                let complete = |_: &[MessageId], tids: &[Tid]| self.complete_query(Rows::Tids(tids), None, now);
                // Deleting takes no value but the `ctid`s; keeping published rows takes a time.
                let prepared = match self.config.retention {
                    Retention::Delete => Prepared::ByTids,
                    Retention::KeepPublished => Prepared::No,
                };
                let (settled, rest) = self.settle_held(held, lease, ids, |id| *id, complete, prepared).await;
                done += settled;
                rest
            }
            None => ids.to_vec(),
        };
        #[cfg(not(feature = "postgres"))]
        let rest = ids;
        for chunk in rest.chunks(MAX_IDS_PER_STATEMENT) {
            done += self.execute(&self.db, self.complete_query(Rows::Ids(chunk), Some(lease), now)).await?;
        }
        Ok(done)
    }

    async fn fail(&self, failures: &[Failure], lease: &Lease) -> Result<()> {
        if let Some(own) = &self.ownership {
            own.settled(failures.iter().map(|f| f.id));
        }
        let now = now_millis();
        #[cfg(feature = "postgres")]
        let rest: Vec<Failure> = match &self.held {
            Some(held) => {
                let fail = |mine: &[Failure], _: &[Tid]| self.fail_query(mine, None, now);
                self.settle_held(held, lease, failures, |f| f.id, fail, Prepared::No).await.1
            }
            None => failures.to_vec(),
        };
        #[cfg(not(feature = "postgres"))]
        let rest = failures;
        for chunk in rest.chunks(MAX_IDS_PER_STATEMENT / 4) {
            self.execute(&self.db, self.fail_query(chunk, Some(lease), now)).await?;
        }
        Ok(())
    }

    async fn stats(&self) -> Result<OutboxStats> {
        let now = now_millis();
        let mut q = Query::new(self.dialect);
        q.push("SELECT COUNT(CASE WHEN status = 0 THEN 1 END) AS pending, ")
            .push("COUNT(CASE WHEN status = 0 AND claimed_until > ")
            .bind(now)
            .push(" THEN 1 END) AS claimed, COUNT(CASE WHEN status = 2 THEN 1 END) AS dead, ")
            .push("MIN(CASE WHEN status = 0 THEN created_at END) AS oldest FROM ")
            .push(&self.table)
            .push(" WHERE status IN (0, 2)");
        let rows = self.fetch(&self.db, q).await?;
        let Some(row) = rows.first() else { return Ok(OutboxStats::default()) };
        let count =
            |col: &str| row.try_get::<i64>("", col).map(|n| u64::try_from(n).unwrap_or(0)).map_err(|e| self.db_err(e));
        let oldest: Option<i64> = row.try_get("", "oldest").map_err(|e| self.db_err(e))?;
        #[cfg(feature = "postgres")]
        let held = self.held.as_ref().map_or(0, |h| h.open_rows());
        #[cfg(not(feature = "postgres"))]
        let held = 0;
        Ok(OutboxStats {
            pending: count("pending")?,
            claimed: count("claimed")? + held,
            dead: count("dead")?,
            oldest_pending_age: oldest.map(|c| age_since(now, c)),
        })
    }

    fn relay_started(&self) {
        if let Some(own) = &self.ownership {
            own.relay_started();
        }
    }

    /// Hands the store's partitions over when its last relay stops.
    async fn relay_stopped(&self) {
        if let Some(own) = &self.ownership
            && own.relay_stopped()
            && let Err(error) = self.release_partitions().await
        {
            tracing::warn!(%error, "could not hand the partitions over; they move when their leases expire");
        }
    }
}

#[async_trait]
impl OutboxAdmin for SqlStore {
    async fn key_backlog(&self, limit: usize) -> Result<Vec<(String, u64)>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut q = Query::new(self.dialect);
        q.push("SELECT msg_key, COUNT(*) AS n FROM ")
            .push(&self.table)
            .push(" WHERE status = 0 AND msg_key IS NOT NULL GROUP BY msg_key ORDER BY n DESC, msg_key LIMIT ")
            .bind(limit_value(limit));
        self.fetch(&self.db, q)
            .await?
            .iter()
            .map(|r| {
                let key: String = r.try_get("", "msg_key")?;
                let n: i64 = r.try_get("", "n")?;
                Ok((key, u64::try_from(n).unwrap_or(0)))
            })
            .collect::<std::result::Result<_, DbErr>>()
            .map_err(|e| self.db_err(e))
    }

    async fn dead_letters(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let mut q = Query::new(self.dialect);
        q.push("SELECT ").push(MESSAGE_COLUMNS).push(" FROM ").push(&self.table).push(" WHERE status = 2");
        if !query.ids.is_empty() {
            q.push(" AND ").uuid_in("id", query.ids.iter().map(|id| id.as_uuid()));
        }
        if let Some(topic) = &query.topic {
            q.push(" AND topic = ").bind(topic.clone());
        }
        q.push(" ORDER BY seq LIMIT ").bind(limit_value(query.limit));
        self.fetch(&self.db, q)
            .await?
            .iter()
            .map(|r| {
                let row = self.listed(self.decode(r))?;
                Ok(DeadLetter { dead_at: row.finished_at.unwrap_or(0), message: row.message })
            })
            .collect()
    }

    async fn replay(&self, selector: &ReplaySelector) -> Result<u64> {
        if matches!(selector, ReplaySelector::Ids(ids) if ids.is_empty()) {
            return Ok(0);
        }
        let mut q = Query::new(self.dialect);
        q.push("UPDATE ")
            .push(&self.table)
            .push(" SET status = 0, attempts = 0, available_at = ")
            .bind(now_millis())
            .push(", claimed_until = NULL, claim_token = NULL, finished_at = NULL WHERE status = 2");
        match selector {
            ReplaySelector::Ids(ids) => {
                q.push(" AND ").uuid_in("id", ids.iter().map(|id| id.as_uuid()));
            }
            ReplaySelector::Topic(topic) => {
                q.push(" AND topic = ").bind(topic.clone());
            }
            ReplaySelector::All => {}
        }
        self.execute(&self.db, q).await
    }

    async fn purge_dead(&self, older_than: Duration) -> Result<u64> {
        let cutoff = now_millis().saturating_sub(duration_millis(older_than));
        let mut q = Query::new(self.dialect);
        q.push("DELETE FROM ").push(&self.table).push(" WHERE status = 2 AND finished_at <= ").bind(cutoff);
        self.execute(&self.db, q).await
    }

    async fn purge_published(&self, older_than: Duration, limit: usize) -> Result<u64> {
        if limit == 0 {
            return Ok(0);
        }
        let cutoff = now_millis().saturating_sub(duration_millis(older_than));
        let mut q = Query::new(self.dialect);
        q.push("DELETE FROM ").push(&self.table);
        if self.dialect == Dialect::MySql {
            // MySQL has no LIMIT in IN-subqueries, but DELETE takes ORDER BY … LIMIT.
            q.push(" WHERE status = 1 AND finished_at <= ").bind(cutoff);
        } else {
            q.push(" WHERE seq IN (SELECT seq FROM ")
                .push(&self.table)
                .push(" WHERE status = 1 AND finished_at <= ")
                .bind(cutoff);
        }
        q.push(" ORDER BY seq LIMIT ").bind(limit_value(limit));
        if self.dialect != Dialect::MySql {
            q.push(")");
        }
        self.execute(&self.db, q).await
    }
}

#[cfg(all(test, feature = "postgres"))]
mod explain_tests {
    use outbox_core::testkit::{test_url, unique_suffix, unreachable_server};
    use sea_orm::{Database, Statement};

    use super::*;

    const VAR: &str = "OUTBOX_TEST_POSTGRES_URL";
    const ROWS: i64 = 1_000_000;

    async fn explain(store: &SqlStore, q: Query) -> String {
        let mut stmt: Statement = q.build();
        stmt.sql = format!("EXPLAIN {}", stmt.sql);
        let rows = store.db.query_all_raw(stmt).await.unwrap();
        rows.iter().map(|r| r.try_get_by_index::<String>(0).unwrap()).collect::<Vec<_>>().join("\n")
    }

    /// On a million-row table, neither claim query reads the whole table, and sweeps start
    /// their scan at the window's start, a pending row.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn claim_queries_use_indexes_on_a_large_table() {
        let url = test_url(VAR, "postgres://postgres@127.0.0.1:5432/test");
        let db = match Database::connect(url.as_str()).await {
            Ok(db) => db,
            Err(e) => return unreachable_server(VAR, &url, e).unwrap_or(()),
        };
        let table = format!("outbox_explain_{}", unique_suffix());
        let config = SqlStoreConfig::default().table(table.clone());
        crate::migrate(&db, &config).await.unwrap();
        let store = SqlStore::new(db, config).unwrap();

        // 10 % keyless, the rest over 5,000 keys; 1 % dead letters.
        let fill = format!(
            "INSERT INTO {t} (id, topic, msg_key, payload, headers, status, attempts, created_at, available_at) \
             SELECT gen_random_uuid(), 'bench', CASE WHEN g % 10 = 0 THEN NULL ELSE 'key-' || (g % 5000) END, \
             '\\x00'::bytea, '{{}}', CASE WHEN g % 100 = 0 THEN 2 ELSE 0 END, 0, {now} - {ROWS} + g, {now} - {ROWS} + g \
             FROM generate_series(1, {ROWS}) AS g",
            t = store.table,
            now = now_millis()
        );
        store.db.execute_unprepared(&fill).await.unwrap();
        store.db.execute_unprepared(&format!("ANALYZE {}", store.table)).await.unwrap();

        let lease = Lease::new(Duration::from_secs(30));
        let now = now_millis();
        let until = now + 30_000;
        let due = store.claim_update(
            Pick::Due { created_before: now - 2_000, limit: 500, window: Some(SWEEP_WINDOW) },
            &lease,
            now,
            until,
        );
        let ids: Vec<MessageId> = (0..256).map(|_| MessageId::new()).collect();
        let by_id = store.claim_update(Pick::Ids(&ids), &lease, now, until);
        let window = Some(SWEEP_WINDOW);
        let held_due = store.held_claim_query(
            Pick::Due { created_before: now, limit: 500, window },
            now,
            &[Tid { block: 0, offset: 1 }],
        );
        let held_ids = store.held_claim_query(Pick::Ids(&ids), now, &[]);
        let plans = [
            ("leased claim_due", explain(&store, due).await),
            ("leased claim_ids", explain(&store, by_id).await),
            ("held claim_due", explain(&store, held_due).await),
            ("held claim_ids", explain(&store, held_ids).await),
        ];

        store.db.execute_unprepared(&format!("DROP TABLE {}", store.table)).await.unwrap();
        for (name, plan) in plans {
            // (The lease table is small enough that a scan of it is the cheapest plan.)
            assert!(!plan.contains(&format!("Seq Scan on {table} ")), "{name} scans the whole table:\n{plan}");
            assert!(plan.contains("SKIP LOCKED") || plan.contains("LockRows"), "{name}:\n{plan}");
            if name.ends_with("claim_due") {
                // Deleted rows not yet vacuumed lie below the oldest pending one.
                assert!(plan.contains("(seq >= "), "{name} does not start at the window's start:\n{plan}");
            }
        }
    }
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
