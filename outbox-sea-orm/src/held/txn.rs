//! Transactions of held claims, on the pool's own sqlx connections.
//!
//! Two things SeaORM's transactions do not offer: a `BEGIN` that sets the idle timeout in the
//! same round trip, and keeping the connection between claims. sqlx pings a connection when it
//! leaves the pool and again when it comes back, so borrowing afresh for every claim would
//! add two round trips to the ones a held claim needs.
//!
//! A claim that commits opens the next transaction in the same round trip
//! (`COMMIT; BEGIN; SET LOCAL …`), and a settle that deletes the whole claim goes with them
//! (`EXECUTE outbox_settle(…); COMMIT; BEGIN; …`), so a busy relay's claim cycle is two round
//! trips: claim, then settle. A transaction that has only run `BEGIN` and `SET` holds no
//! snapshot and no transaction id, so a kept one does not hold back vacuum; it shows as `idle
//! in transaction` for up to [`SPARE_FOR`].

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use sea_orm::sqlx::pool::PoolConnection;
use sea_orm::sqlx::postgres::PgRow;
use sea_orm::sqlx::{self, AssertSqlSafe, PgConnection, PgPool, Postgres};
use sea_query_sqlx::SqlxValues;

use super::share::Slot;
use crate::sql::Query;

/// How long a connection waits between held claims before it goes back to the pool.
const SPARE_FOR: Duration = Duration::from_secs(1);

/// An open transaction on a pooled connection. Dropped before it ends (an error, an expired
/// lease) it closes the connection, which rolls the transaction back and frees its rows,
/// instead of handing the pool a connection in mid-transaction.
pub(super) struct Txn {
    conn: Option<PoolConnection<Postgres>>,
    /// Ends the transaction (and its locks) if its claimer stalls this long.
    idle_timeout: Duration,
    /// [`SETTLE`] is prepared on this connection (deallocated before it goes back to the pool).
    settle_prepared: bool,
    /// The connection's place in its pool's share, given back when it goes back to the pool.
    _slot: Slot,
}

/// The session-level prepared statement of [`Txn::settle_and_renew`]. One name serves every
/// store: a connection serves one store's claims between leaving the pool and going back.
const SETTLE: &str = "outbox_settle";

impl Txn {
    /// `BEGIN`, with the idle timeout, on a connection from the pool.
    pub(super) async fn fresh(pool: &PgPool, idle_timeout: Duration, slot: Slot) -> Result<Self, sqlx::Error> {
        let mut txn = Self { conn: Some(pool.acquire().await?), idle_timeout, settle_prepared: false, _slot: slot };
        txn.run(begin_with(idle_timeout)).await?;
        Ok(txn)
    }

    /// Rolls back and begins anew with `idle_timeout`, on this connection, or on a fresh one
    /// from the pool if the server dropped this one.
    pub(super) async fn restart(&mut self, pool: &PgPool, idle_timeout: Duration) -> Result<(), sqlx::Error> {
        self.idle_timeout = idle_timeout;
        if self.renew("ROLLBACK").await.is_err() {
            self.reopen(pool).await?;
        }
        Ok(())
    }

    /// `BEGIN` again on a fresh connection from the pool, closing this one (the server may
    /// have dropped it).
    pub(super) async fn reopen(&mut self, pool: &PgPool) -> Result<(), sqlx::Error> {
        if let Some(mut dead) = self.conn.take() {
            dead.close_on_drop();
        }
        self.conn = Some(pool.acquire().await?);
        self.settle_prepared = false;
        self.run(begin_with(self.idle_timeout)).await
    }

    fn conn(&mut self) -> &mut PgConnection {
        self.conn.as_mut().expect("a transaction keeps its connection until it ends")
    }

    async fn run(&mut self, statements: String) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(AssertSqlSafe(statements)).execute(self.conn()).await?;
        Ok(())
    }

    pub(super) async fn fetch_all(&mut self, q: Query) -> Result<Vec<PgRow>, sqlx::Error> {
        let (sql, values) = q.into_parts();
        sqlx::query_with(AssertSqlSafe(sql), SqlxValues(values)).fetch_all(self.conn()).await
    }

    /// Runs a statement; returns the rows it changed.
    pub(super) async fn execute(&mut self, q: Query) -> Result<u64, sqlx::Error> {
        let (sql, values) = q.into_parts();
        let done = sqlx::query_with(AssertSqlSafe(sql), SqlxValues(values)).execute(self.conn()).await?;
        Ok(done.rows_affected())
    }

    /// Ends the transaction with `end` (`COMMIT` or `ROLLBACK`) and opens the next one, in
    /// one round trip. A failed `end` runs nothing after it.
    pub(super) async fn renew(&mut self, end: &'static str) -> Result<(), sqlx::Error> {
        self.run(format!("{end}; {}", begin_with(self.idle_timeout))).await
    }

    /// Runs `statement` (SQL with one `text` parameter, `$1`) with `argument`, commits and
    /// opens the next transaction, in one round trip; returns the rows the statement changed.
    /// The simple protocol takes no bound values, so the statement is prepared at the SQL
    /// level (`PREPARE`, once per connection; not transactional) and run with `EXECUTE`, the
    /// argument written in: it must not contain `'` or `\`. Each settle a busy relay makes
    /// then costs one round trip instead of two.
    pub(super) async fn settle_and_renew(&mut self, statement: &str, argument: &str) -> Result<u64, sqlx::Error> {
        use futures::TryStreamExt;
        debug_assert!(!argument.contains(['\'', '\\']));
        let prepare =
            if self.settle_prepared { String::new() } else { format!("PREPARE {SETTLE} (text) AS {statement}; ") };
        let sql = format!("{prepare}EXECUTE {SETTLE}('{argument}'); COMMIT; {}", begin_with(self.idle_timeout));
        let had_prepare = !prepare.is_empty();
        let mut results = sqlx::raw_sql(AssertSqlSafe(sql)).fetch_many(self.conn());
        let mut changed = Vec::with_capacity(5);
        while let Some(step) = results.try_next().await? {
            if let Some(done) = step.left() {
                changed.push(done.rows_affected());
            }
        }
        drop(results);
        self.settle_prepared = true;
        // PREPARE, if sent, completes first; then EXECUTE.
        Ok(changed.get(usize::from(had_prepare)).copied().unwrap_or(0))
    }

    /// Rolls back and gives the connection back to the pool, without this store's prepared
    /// statement.
    async fn release(mut self) -> Result<(), sqlx::Error> {
        let sql = if self.settle_prepared { format!("ROLLBACK; DEALLOCATE {SETTLE}") } else { "ROLLBACK".to_owned() };
        self.run(sql).await?;
        drop(self.conn.take());
        Ok(())
    }
}

/// `BEGIN`, with an idle timeout that ends the transaction (and its locks) if its claimer
/// stalls.
fn begin_with(idle_timeout: Duration) -> String {
    format!("BEGIN; SET LOCAL idle_in_transaction_session_timeout = {}", idle_timeout.as_millis().max(1))
}

impl std::fmt::Debug for Txn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Txn").field("idle_timeout", &self.idle_timeout).finish()
    }
}

impl Drop for Txn {
    fn drop(&mut self) {
        if let Some(conn) = &mut self.conn {
            conn.close_on_drop();
        }
    }
}

/// Where a claim's transaction came from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Opened {
    /// A kept one, begun when the claim before it ended: the server may have dropped its
    /// connection since (a restart), which only its first statement finds out.
    Kept,
    /// Begun just now on a connection from the pool.
    Fresh,
}

/// Transactions begun and set aside between held claims, newest last.
#[derive(Debug, Default)]
pub(super) struct Spares {
    txns: Mutex<Vec<(Txn, Instant)>>,
    /// A task is on its way to give old spares back to the pool.
    tidying: Mutex<bool>,
}

impl Spares {
    fn lock(&self) -> MutexGuard<'_, Vec<(Txn, Instant)>> {
        self.txns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The newest spare, if it was kept less than [`SPARE_FOR`] ago with this idle timeout.
    /// Others wait for [`Self::tidy`].
    pub(super) fn take(&self, idle_timeout: Duration) -> Option<Txn> {
        let mut txns = self.lock();
        let (txn, since) = txns.last()?;
        if txn.idle_timeout != idle_timeout || since.elapsed() >= SPARE_FOR.min(idle_timeout / 2) {
            return None;
        }
        txns.pop().map(|(txn, _)| txn)
    }

    /// The newest spare, however old, with any idle timeout: for a claim that finds the
    /// pool's share taken, partly by this store's own spares.
    pub(super) fn take_any(&self) -> Option<Txn> {
        self.lock().pop().map(|(txn, _)| txn)
    }

    /// Keeps `txn` for the next claim; it goes back to the pool after [`SPARE_FOR`] unused.
    /// It keeps its place in the pool's share meanwhile, so held claims and kept
    /// transactions together stay within it.
    pub(super) fn keep(self: &Arc<Self>, txn: Txn) {
        self.lock().push((txn, Instant::now()));
        let mut tidying = self.tidying.lock().unwrap_or_else(|e| e.into_inner());
        if !*tidying {
            *tidying = true;
            tokio::spawn(Self::tidy(Arc::downgrade(self)));
        }
    }

    /// Rolls back spares unused for [`SPARE_FOR`] and gives their connections back to the
    /// pool, until none are left.
    async fn tidy(spares: Weak<Self>) {
        loop {
            tokio::time::sleep(SPARE_FOR).await;
            let Some(spares) = spares.upgrade() else { return };
            let (stale, done) = {
                let mut tidying = spares.tidying.lock().unwrap_or_else(|e| e.into_inner());
                let mut txns = spares.lock();
                let (stale, kept): (Vec<_>, Vec<_>) =
                    txns.drain(..).partition(|(_, since)| since.elapsed() >= SPARE_FOR);
                *txns = kept;
                *tidying = !txns.is_empty();
                (stale, txns.is_empty())
            };
            drop(spares);
            for (txn, _) in stale {
                // One that cannot roll back closes its connection as it drops.
                let _ = txn.release().await;
            }
            if done {
                return;
            }
        }
    }
}
