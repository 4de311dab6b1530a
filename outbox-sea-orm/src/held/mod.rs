//! Postgres claims held in open transactions ([`ClaimMode::Transaction`](crate::ClaimMode)).
//!
//! A claim is `SELECT … FOR UPDATE SKIP LOCKED` in a transaction left open while the batch is
//! published; `complete` and `fail` run in it and commit. Claiming writes nothing, so a claim
//! plus a complete costs about what one `DELETE … RETURNING` costs. Every settle commits, so
//! what it reports is durable: rows of the claim that are still unsettled get a lease first.
//! Settles find their rows by `ctid`: rows this transaction has locked cannot move, and a
//! TID scan skips the index descent per row that a lookup by key costs.
//!
//! The transactions run on the pool's sqlx connections directly ([`txn`]).

mod txn;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use outbox_core::message::{duration_millis, now_millis};
use outbox_core::{Lease, MessageId, Result, UnixMillis};
use sea_orm::sqlx::{self, PgPool, Postgres};
use uuid::Uuid;

use self::txn::{Opened, Spares, Txn};
use crate::decode::{ColumnCheck, Row, checked};
use crate::error::from_sqlx;
use crate::schema::MESSAGE_COLUMNS;
use crate::sql::{Query, Tid};
use crate::store::{Pick, SqlStore};

/// Where a held claim's query puts `ctid`: right after [`MESSAGE_COLUMNS`].
const TID_COLUMN: usize = 10;

/// Smallest pool that held claims run on: one connection for them, one for everyone else.
pub(crate) const MIN_POOL: u32 = 2;

/// The open claims of one store, by lease token.
#[derive(Debug)]
pub(crate) struct HeldClaims {
    claims: Mutex<HashMap<Uuid, Held>>,
    /// The last sweep found nothing.
    idle: AtomicBool,
    /// The server's `transaction_timeout` was compared with the claim TTL.
    timeout_checked: AtomicBool,
    /// The connections held claims may take from the pool, shared by every store on it.
    share: Arc<PoolShare>,
    /// Transactions begun for this store's next claims (they count in `share`).
    spares: Arc<Spares>,
}

/// Connections that held claims, and the transactions kept for the next ones, have taken
/// from one pool: at most half of it, whichever stores on the pool took them.
#[derive(Debug)]
pub(crate) struct PoolShare {
    taken: AtomicUsize,
    capacity: usize,
}

/// The share of each pool with held claims, by the address of its options (which live as
/// long as the pool does, and a live share keeps its pool alive: every holder of one holds
/// the pool too).
static SHARES: Mutex<Vec<(usize, Weak<PoolShare>)>> = Mutex::new(Vec::new());

impl PoolShare {
    /// The share of `pool`, created on first use: half its connections, at least one.
    pub(crate) fn of(pool: &PgPool) -> Arc<Self> {
        let key = std::ptr::from_ref(pool.options()) as usize;
        let mut shares = SHARES.lock().unwrap_or_else(|e| e.into_inner());
        shares.retain(|(_, share)| share.strong_count() > 0);
        if let Some(share) = shares.iter().find(|(k, _)| *k == key).and_then(|(_, share)| share.upgrade()) {
            return share;
        }
        let capacity = (pool.options().get_max_connections() as usize / 2).max(1);
        let share = Arc::new(Self { taken: AtomicUsize::new(0), capacity });
        shares.push((key, Arc::downgrade(&share)));
        share
    }

    fn reserve(self: &Arc<Self>) -> Option<Slot> {
        self.taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.capacity).then_some(n + 1))
            .ok()
            .map(|_| Slot(self.clone()))
    }
}

/// One lease's open transaction and the rows it holds.
pub(crate) struct Held {
    txn: Txn,
    /// Unsettled rows: message id → `ctid`, the cheapest way back to a row this transaction
    /// has locked.
    open: HashMap<MessageId, Tid>,
    /// When the lease ends; unsettled rows get this as their `claimed_until`.
    expires_at: UnixMillis,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held").field("open", &self.open.len()).field("expires_at", &self.expires_at).finish()
    }
}

impl Held {
    /// Ends the transaction with `end` (`COMMIT` or `ROLLBACK`) and begins the next claim's
    /// in the same round trip; the slot frees up and the new transaction waits for that claim.
    async fn finish(self, held: &HeldClaims, end: &'static str) -> std::result::Result<(), sqlx::Error> {
        let Held { mut txn, .. } = self;
        txn.renew(end).await?;
        held.spares.keep(txn);
        Ok(())
    }

    /// Deletes the whole claim with `statement` (its `ctid`s as `$1`), commits and begins the
    /// next claim's transaction, in one round trip; returns the rows deleted.
    async fn settle_all(
        self,
        held: &HeldClaims,
        statement: &str,
        tids: &[Tid],
    ) -> std::result::Result<u64, sqlx::Error> {
        let Held { mut txn, .. } = self;
        let settled = txn.settle_and_renew(statement, &Tid::array_literal(tids)).await?;
        held.spares.keep(txn);
        Ok(settled)
    }
}

/// Whether a settle statement can run prepared ([`txn::Txn::settle_and_renew`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Prepared {
    /// Its only value is the `ctid` list, bound as `$1`.
    ByTids,
    /// It has other values (such as error texts): sent on its own, values bound.
    No,
}

/// A connection taken from a pool's [`PoolShare`], given back on drop.
#[derive(Debug)]
struct Slot(Arc<PoolShare>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Ordering::AcqRel);
    }
}

impl HeldClaims {
    pub(crate) fn new(share: Arc<PoolShare>) -> Self {
        Self {
            claims: Mutex::default(),
            idle: AtomicBool::new(true),
            timeout_checked: AtomicBool::new(false),
            share,
            spares: Arc::default(),
        }
    }

    pub(crate) fn idle(&self) -> bool {
        self.idle.load(Ordering::Relaxed)
    }

    pub(crate) fn set_idle(&self, idle: bool) {
        self.idle.store(idle, Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, Held>> {
        self.claims.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the claim of `token` out while a statement runs in it (a transaction runs one
    /// statement at a time). Expired claims are dropped on the way, which rolls them back;
    /// Postgres has usually ended them already through the idle timeout.
    fn take(&self, token: Uuid) -> Option<Held> {
        let now = now_millis();
        let (claim, expired) = {
            let mut claims = self.lock();
            let expired: Vec<Uuid> = claims.iter().filter(|(_, h)| h.expires_at <= now).map(|(t, _)| *t).collect();
            let expired: Vec<Held> = expired.iter().filter_map(|t| claims.remove(t)).collect();
            (claims.remove(&token), expired)
        };
        if !expired.is_empty() {
            tracing::warn!(claims = expired.len(), "held claims outlived their lease; rolled back");
        }
        claim.filter(|c| c.expires_at > now)
    }

    fn put(&self, token: Uuid, claim: Held) {
        self.lock().insert(token, claim);
    }

    /// Rows held by this store's open claims.
    pub(crate) fn open_rows(&self) -> u64 {
        self.lock().values().map(|h| h.open.len() as u64).sum()
    }
}

impl SqlStore {
    /// Claims in the lease's open transaction, opening one. `None` when every slot for held
    /// claims is taken: the caller then claims with a lease.
    pub(crate) async fn claim_held(
        &self,
        held: &HeldClaims,
        pick: Pick<'_>,
        lease: &Lease,
        now: UnixMillis,
    ) -> Result<Option<Vec<Row>>> {
        if !held.timeout_checked.swap(true, Ordering::Relaxed) {
            self.check_transaction_timeout(lease.ttl).await;
        }
        let pool = self.db.get_postgres_connection_pool();
        let (mut claim, opened) = match held.take(lease.token) {
            Some(claim) => (claim, None),
            None => {
                let Some((txn, opened)) = self.begin_held(held, lease.ttl).await? else { return Ok(None) };
                let expires_at = now.saturating_add(duration_millis(lease.ttl));
                (Held { txn, open: HashMap::new(), expires_at }, Some(opened))
            }
        };
        let held_tids: Vec<Tid> = claim.open.values().copied().collect();
        let found = match claim.txn.fetch_all(self.held_claim_query(pick, now, &held_tids)).await {
            Ok(found) => found,
            // Most likely a kept transaction whose connection the server dropped.
            Err(error) if opened == Some(Opened::Kept) => {
                tracing::debug!(%error, "a kept transaction failed; claiming on a fresh connection");
                claim.txn.reopen(pool).await.map_err(|e| self.sqlx_err(e))?;
                let q = self.held_claim_query(pick, now, &held_tids);
                claim.txn.fetch_all(q).await.map_err(|e| self.sqlx_err(e))?
            }
            Err(error) => return Err(self.sqlx_err(error)),
        };
        let mut rows = Vec::with_capacity(found.len());
        let mut tids = Vec::with_capacity(found.len());
        let mut unreadable = Vec::new();
        let tid_column: ColumnCheck = (TID_COLUMN, <Tid as sqlx::Type<Postgres>>::compatible);
        for row in checked(&found, &[tid_column]).map_err(|e| self.db_err(e))? {
            match self.claimed(self.decode(&row))? {
                Ok(decoded) => {
                    rows.push(decoded);
                    tids.push(row.tid(TID_COLUMN).map_err(|e| self.db_err(e))?);
                }
                Err(bad) => unreadable.push(bad),
            }
        }
        // In the claim's transaction: the rows are locked by it. They commit with its settle.
        for bad in &unreadable {
            bad.log();
            claim.txn.execute(self.dead_letter_query(bad, None, now)).await.map_err(|e| self.sqlx_err(e))?;
        }
        if rows.is_empty() && claim.open.is_empty() {
            let end = if unreadable.is_empty() { "ROLLBACK" } else { "COMMIT" };
            claim.finish(held, end).await.map_err(|e| self.sqlx_err(e))?;
            return Ok(Some(rows));
        }
        claim.open.extend(rows.iter().map(|r| r.message.id).zip(tids));
        held.put(lease.token, claim);
        Ok(Some(rows))
    }

    /// A transaction for a new claim: a spare, or one begun on a connection from the pool's
    /// share. `None` when the share is taken.
    async fn begin_held(&self, held: &HeldClaims, ttl: std::time::Duration) -> Result<Option<(Txn, Opened)>> {
        let pool = self.db.get_postgres_connection_pool();
        if let Some(txn) = held.spares.take(ttl) {
            return Ok(Some((txn, Opened::Kept)));
        }
        if let Some(slot) = held.share.reserve() {
            return Ok(Some((Txn::fresh(pool, ttl, slot).await.map_err(|e| self.sqlx_err(e))?, Opened::Fresh)));
        }
        // The share may be taken by this store's own spares (too old to trust, or of another
        // TTL): begin anew on one of those.
        let Some(mut txn) = held.spares.take_any() else { return Ok(None) };
        txn.restart(pool, ttl).await.map_err(|e| self.sqlx_err(e))?;
        Ok(Some((txn, Opened::Fresh)))
    }

    /// `SELECT … FOR UPDATE SKIP LOCKED` of what `pick` may claim, leaving out `held_tids`.
    pub(crate) fn held_claim_query(&self, pick: Pick<'_>, now: UnixMillis, held_tids: &[Tid]) -> Query {
        let mut q = Query::new(self.dialect);
        self.push_window_cte(&mut q, pick, now);
        q.push("SELECT ").push(MESSAGE_COLUMNS).push(", c.ctid FROM ").push(&self.table).push(" c");
        self.push_claimable(&mut q, now, pick, held_tids);
        q.push(" FOR UPDATE OF c SKIP LOCKED");
        q
    }

    /// Settles the items (ids or failures) whose messages `lease`'s open transaction holds
    /// with `statement` (given those items and their `ctid`s), then commits.
    /// Returns the rows it changed and the items it does not hold (leased, or not ours).
    /// A transaction that fails here is gone, and its rows are free again: that counts as a
    /// lost claim (0 rows), as an expired lease does. With [`Prepared::ByTids`], a settle of
    /// the whole claim goes with the commit in one round trip.
    pub(crate) async fn settle_held<T: Clone>(
        &self,
        held: &HeldClaims,
        lease: &Lease,
        items: &[T],
        id_of: impl Fn(&T) -> MessageId,
        statement: impl Fn(&[T], &[Tid]) -> Query,
        prepared: Prepared,
    ) -> (u64, Vec<T>) {
        let Some(mut claim) = held.take(lease.token) else { return (0, items.to_vec()) };
        let (mut mine, mut tids, mut rest) = (Vec::new(), Vec::new(), Vec::new());
        for item in items {
            match claim.open.remove(&id_of(item)) {
                Some(tid) => {
                    mine.push(item.clone());
                    tids.push(tid);
                }
                None => rest.push(item.clone()),
            }
        }
        if mine.is_empty() {
            held.put(lease.token, claim);
            return (0, rest);
        }
        let count = mine.len();
        let outcome = async move {
            if prepared == Prepared::ByTids && claim.open.is_empty() {
                // The whole claim settles: statement, commit and the next BEGIN in one round trip.
                let q = statement(&mine, &[]);
                return claim.settle_all(held, q.sql(), &tids).await.map_err(|e| self.sqlx_err(e));
            }
            let settled = claim.txn.execute(statement(&mine, &tids)).await.map_err(|e| self.sqlx_err(e))?;
            if !claim.open.is_empty() {
                let mut q = Query::new(self.dialect);
                q.push("UPDATE ")
                    .push(&self.table)
                    .push(" SET claimed_until = ")
                    .bind(claim.expires_at)
                    .push(", claim_token = ")
                    .bind(lease.token)
                    .push(" WHERE ")
                    .tid_in("ctid", claim.open.values());
                claim.txn.execute(q).await.map_err(|e| self.sqlx_err(e))?;
            }
            claim.finish(held, "COMMIT").await.map_err(|e| self.sqlx_err(e))?;
            Ok::<_, outbox_core::Error>(settled)
        }
        .await;
        match outcome {
            Ok(settled) => (settled, rest),
            Err(error) => {
                tracing::warn!(%error, rows = count, "a held claim ended before it committed; its rows are free again");
                (0, rest)
            }
        }
    }

    /// Warns when the session's `transaction_timeout` (Postgres 17 and later) would end held
    /// claims before their TTL, however busy they are: their rows would be freed mid-publish
    /// and published again. (`idle_in_transaction_session_timeout` cannot: each claim sets
    /// its own.)
    async fn check_transaction_timeout(&self, ttl: std::time::Duration) {
        let mut q = Query::new(self.dialect);
        q.push("SELECT CAST(setting AS BIGINT) FROM pg_settings WHERE name = 'transaction_timeout'");
        let timeout = match self.fetch(&self.db, q).await {
            Ok(rows) => rows.first().and_then(|r| r.try_get_by_index::<i64>(0).ok()),
            Err(error) => {
                tracing::debug!(%error, "could not read transaction_timeout");
                return;
            }
        };
        if let Some(ms) = timeout.filter(|&ms| cuts_claims_short(ms, ttl)) {
            tracing::warn!(
                transaction_timeout_ms = ms,
                claim_ttl_ms = duration_millis(ttl),
                "Postgres ends transactions after transaction_timeout, before the claim TTL: held claims that \
                 publish that long lose their rows mid-publish, and those are published again. Raise it above the \
                 claim TTL for the relay's role, or use ClaimMode::Lease"
            );
        }
    }

    fn sqlx_err(&self, err: sqlx::Error) -> outbox_core::Error {
        self.db_err(from_sqlx(err))
    }
}

/// A `transaction_timeout` of `ms` (0: none) ends transactions before `ttl` is up.
fn cuts_claims_short(ms: i64, ttl: std::time::Duration) -> bool {
    ms > 0 && i128::from(ms) < i128::try_from(ttl.as_millis()).unwrap_or(i128::MAX)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::cuts_claims_short;

    #[test]
    fn a_transaction_timeout_below_the_claim_ttl_cuts_claims_short() {
        let ttl = Duration::from_secs(30);
        assert!(cuts_claims_short(10_000, ttl));
        assert!(cuts_claims_short(29_999, ttl));
        assert!(!cuts_claims_short(30_000, ttl), "a claim settles or has lost its lease by then anyway");
        assert!(!cuts_claims_short(0, ttl), "0 is no timeout");
    }
}
