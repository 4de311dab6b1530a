//! Sweeps and claims: leased on every backend (one statement; a short transaction on
//! MySQL), or held in a transaction on Postgres ([`crate::held`]).

use outbox_core::message::{duration_millis, now_millis};
use outbox_core::{Lease, OutboxMessage, Result, UnixMillis};
use sea_orm::{ConnectionTrait, IsolationLevel, QueryResult, TransactionTrait};

use super::decode::{Row, Unreadable};
use super::pick::Pick;
use super::{SqlStore, limit_value, truncate_error};
#[cfg(feature = "postgres")]
use crate::held::HeldClaims;
use crate::schema::MESSAGE_COLUMNS;
use crate::sql::{Dialect, Query};

/// ([`ClaimMode::Transaction`](crate::ClaimMode::Transaction)); smaller ones take a lease.
#[cfg(feature = "postgres")]
const HOLD_FROM_IDS: usize = 32;

/// A sweep looks this many `seq`s past its start (at least; 10 × its limit if more): the
/// first pending row that is not stuck, found among this many oldest pending rows. Rows
/// blocked behind an in-flight head of their key cost an index probe each; the window keeps a
/// sweep that finds nothing from walking the whole backlog to say so.
pub(crate) const SWEEP_WINDOW: i64 = 10_000;

impl SqlStore {
    /// A sweep: keyed messages from the held partitions and the others, taking turns at
    /// going first; a failure of the second part keeps what the first claimed.
    pub(crate) async fn sweep(
        &self,
        created_before: UnixMillis,
        limit: usize,
        lease: &Lease,
    ) -> Result<Vec<OutboxMessage>> {
        use std::sync::atomic::Ordering;
        let claimed = if self.ownership.is_none() {
            self.sweep_unpartitioned(created_before, limit, lease).await?
        } else {
            // With no unpartitioned rows seen, the keyed claim goes first: its probe tells
            // whether the window sweep has anything to do, which saves a round trip a sweep.
            let turn = self.keyed_first.fetch_xor(true, Ordering::Relaxed);
            let keyed_first = !turn || !self.unpartitioned_pending.load(Ordering::Relaxed);
            let mut claimed = if keyed_first {
                self.claim_keyed(created_before, limit, lease).await?
            } else {
                self.sweep_unpartitioned(created_before, limit, lease).await?
            };
            let rest = limit - claimed.len();
            let skip_window = keyed_first && !self.unpartitioned_pending.load(Ordering::Relaxed);
            if rest > 0 && !skip_window {
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
    /// came back short and the last full sweep is [`FULL_SWEEP_EVERY`](super::FULL_SWEEP_EVERY) ago.
    pub(crate) async fn sweep_unpartitioned(
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
        Ok(self.claim_rows(pick, lease).await?.into_iter().map(|r| r.message).collect())
    }

    /// [`claim`](Self::claim), the rows with their `seq`, ascending.
    pub(crate) async fn claim_rows(&self, pick: Pick<'_>, lease: &Lease) -> Result<Vec<Row>> {
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
        Ok(rows)
    }

    /// A held claim saves a row version per message and, while a relay is busy, costs the
    /// round trips of a lease (its `BEGIN` rides on the previous claim's `COMMIT`); without a
    /// kept transaction it costs one more, and it pins a connection. It pays off for big
    /// batches. Small claims by id (the listener at low rates, where latency counts) and
    /// sweeps that keep finding nothing take leases.
    #[cfg(feature = "postgres")]
    pub(crate) fn worth_holding(held: &HeldClaims, pick: Pick<'_>) -> bool {
        match pick {
            Pick::Ids(ids) => ids.len() >= HOLD_FROM_IDS,
            Pick::Runs { .. } | Pick::Due { .. } => !held.idle(),
        }
    }

    /// A claim that writes a lease on its rows (one statement; a short transaction on MySQL).
    pub(crate) async fn claim_leased(&self, pick: Pick<'_>, lease: &Lease, now: UnixMillis) -> Result<Vec<Row>> {
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
    pub(crate) fn claim_update(&self, pick: Pick<'_>, lease: &Lease, now: UnixMillis, until: UnixMillis) -> Query {
        let mut q = Query::new(self.dialect);
        self.push_window_cte(&mut q, pick, now);
        self.push_lease_update(&mut q, lease, until);
        q.push(" WHERE seq IN (SELECT c.seq FROM ").push(&self.table).push(" c");
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

    /// `UPDATE <table> SET` the lease `lease` holds until `until`; the caller adds the rows.
    fn push_lease_update(&self, q: &mut Query, lease: &Lease, until: UnixMillis) {
        q.push("UPDATE ")
            .push(&self.table)
            .push(" SET claimed_until = ")
            .bind(until)
            .push(", claim_token = ")
            .bind(lease.token);
    }

    /// MySQL/MariaDB: lock the rows, then mark them. READ COMMITTED keeps the locking read
    /// from holding locks (and gap locks) on rows it scanned but did not claim.
    pub(crate) async fn claim_in_transaction(
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
            self.push_lease_update(&mut q, lease, until);
            q.push(" WHERE ").i64_in("seq", rows.iter().map(|r| r.seq));
            self.execute(&txn, q).await?;
        }
        txn.commit().await.map_err(|e| self.db_err(e))?;
        Ok(rows)
    }

    /// The claimed rows that can be published, and those that cannot be read (to dead-letter).
    pub(crate) fn readable(&self, found: &[QueryResult]) -> Result<(Vec<Row>, Vec<Unreadable>)> {
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
    pub(crate) async fn dead_letter_unreadable(
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
}
