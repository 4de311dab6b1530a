//! Claims held in a transaction, and their settles.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use outbox_core::message::duration_millis;
use outbox_core::{Lease, MessageId, Result, UnixMillis};
use sea_orm::sqlx::{self, Postgres};

use super::state::{Held, HeldClaims, Prepared};
use super::txn::{Opened, Txn};
use crate::error::from_sqlx;
use crate::schema::MESSAGE_COLUMNS;
use crate::sql::{Query, Tid};
use crate::store::SqlStore;
use crate::store::decode::{ColumnCheck, Row, checked};
use crate::store::pick::Pick;

/// Where a held claim's query puts `ctid`: right after [`MESSAGE_COLUMNS`].
const TID_COLUMN: usize = 10;

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

    /// Gives back the rows of `ids` that `lease`'s open transaction holds: they leave the
    /// claim untouched (its commit gives them no lease) and are free once it ends, at once if
    /// they were all it held. Returns the ids it does not hold.
    pub(crate) async fn release_held(&self, held: &HeldClaims, lease: &Lease, ids: &[MessageId]) -> Vec<MessageId> {
        let Some(mut claim) = held.take(lease.token) else { return ids.to_vec() };
        let rest: Vec<MessageId> = ids.iter().filter(|id| claim.open.remove(id).is_none()).copied().collect();
        if !claim.open.is_empty() {
            held.put(lease.token, claim);
        } else if let Err(error) = claim.finish(held, "COMMIT").await {
            tracing::debug!(%error, "a held claim ended as it was released; its rows are free again");
        }
        rest
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
