//! Transactions of held claims, on the pool's own sqlx connections.
//!
//! Two things SeaORM's transactions do not offer: a `BEGIN` that sets the idle timeout in the
//! same round trip, and keeping the connection between claims. sqlx pings a connection when it
//! leaves the pool and again when it comes back, so borrowing afresh for every claim would
//! add two round trips to the four a held claim needs.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use sea_orm::sqlx::pool::PoolConnection;
use sea_orm::sqlx::postgres::PgRow;
use sea_orm::sqlx::{self, AssertSqlSafe, PgConnection, PgPool, Postgres};
use sea_query_sqlx::SqlxValues;

use crate::sql::Query;

/// How long a connection waits between held claims before it goes back to the pool.
const SPARE_FOR: Duration = Duration::from_secs(1);

/// An open transaction on a pooled connection. Dropped before it ends (an error, an expired
/// lease) it closes the connection, which rolls the transaction back and frees its rows,
/// instead of handing the pool a connection in mid-transaction.
pub(super) struct Txn {
    conn: Option<PoolConnection<Postgres>>,
}

impl Txn {
    /// `BEGIN`, with an idle timeout that ends the transaction (and its locks) if its claimer
    /// stalls.
    async fn begin(conn: PoolConnection<Postgres>, idle_timeout: Duration) -> Result<Self, sqlx::Error> {
        let mut txn = Self { conn: Some(conn) };
        let begin =
            format!("BEGIN; SET LOCAL idle_in_transaction_session_timeout = {}", idle_timeout.as_millis().max(1));
        sqlx::raw_sql(AssertSqlSafe(begin)).execute(txn.conn()).await?;
        Ok(txn)
    }

    fn conn(&mut self) -> &mut PgConnection {
        self.conn.as_mut().expect("a transaction keeps its connection until it ends")
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

    /// Ends the transaction with `COMMIT` or `ROLLBACK` and gives the connection back for the
    /// next claim.
    pub(super) async fn end(mut self, statement: &'static str) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        sqlx::raw_sql(statement).execute(self.conn()).await?;
        Ok(self.conn.take().expect("a transaction keeps its connection until it ends"))
    }
}

impl Drop for Txn {
    fn drop(&mut self) {
        if let Some(conn) = &mut self.conn {
            conn.close_on_drop();
        }
    }
}

/// Connections set aside between held claims, newest last.
#[derive(Debug, Default)]
pub(super) struct Spares {
    conns: Mutex<Vec<(PoolConnection<Postgres>, Instant)>>,
    /// A task is on its way to give old spares back to the pool.
    tidying: Mutex<bool>,
}

impl Spares {
    fn lock(&self) -> MutexGuard<'_, Vec<(PoolConnection<Postgres>, Instant)>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a transaction on a spare connection, or on one from the pool. A spare that cannot
    /// begin is most likely one the server dropped (a restart): a fresh one is tried then.
    pub(super) async fn begin(&self, pool: &PgPool, idle_timeout: Duration) -> Result<Txn, sqlx::Error> {
        if let Some(conn) = self.take()
            && let Ok(txn) = Txn::begin(conn, idle_timeout).await
        {
            return Ok(txn);
        }
        Txn::begin(pool.acquire().await?, idle_timeout).await
    }

    /// The newest spare younger than [`SPARE_FOR`]; older ones go back to the pool.
    fn take(&self) -> Option<PoolConnection<Postgres>> {
        let mut conns = self.lock();
        let (conn, since) = conns.pop()?;
        if since.elapsed() < SPARE_FOR {
            return Some(conn);
        }
        conns.clear();
        None
    }

    /// Keeps `conn` for the next claim if fewer than `room` are kept; it goes back to the pool
    /// otherwise, or after [`SPARE_FOR`] unused.
    pub(super) fn keep(self: &Arc<Self>, conn: PoolConnection<Postgres>, room: usize) {
        {
            let mut conns = self.lock();
            if conns.len() >= room {
                return;
            }
            conns.push((conn, Instant::now()));
        }
        let mut tidying = self.tidying.lock().unwrap_or_else(|e| e.into_inner());
        if !*tidying {
            *tidying = true;
            tokio::spawn(Self::tidy(Arc::downgrade(self)));
        }
    }

    /// Gives spares unused for [`SPARE_FOR`] back to the pool, until none are left.
    async fn tidy(spares: Weak<Self>) {
        loop {
            tokio::time::sleep(SPARE_FOR).await;
            let Some(spares) = spares.upgrade() else { return };
            let mut tidying = spares.tidying.lock().unwrap_or_else(|e| e.into_inner());
            let mut conns = spares.lock();
            conns.retain(|(_, since)| since.elapsed() < SPARE_FOR);
            if conns.is_empty() {
                *tidying = false;
                return;
            }
        }
    }
}
