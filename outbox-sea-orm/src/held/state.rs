//! A store's open held claims, and the share of its pool they may take.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use outbox_core::message::now_millis;
use outbox_core::{MessageId, UnixMillis};
use sea_orm::sqlx;
use uuid::Uuid;

use super::share::PoolShare;
use super::txn::{Spares, Txn};
use crate::sql::Tid;

/// Smallest pool that held claims run on: one connection for them, one for everyone else.
pub(crate) const MIN_POOL: u32 = 2;

/// The open claims of one store, by lease token.
#[derive(Debug)]
pub(crate) struct HeldClaims {
    pub(super) claims: Mutex<HashMap<Uuid, Held>>,
    /// The last sweep found nothing.
    pub(super) idle: AtomicBool,
    /// The server's `transaction_timeout` was compared with the claim TTL.
    pub(super) timeout_checked: AtomicBool,
    /// The connections held claims may take from the pool, shared by every store on it.
    pub(super) share: Arc<PoolShare>,
    /// Transactions begun for this store's next claims (they count in `share`).
    pub(super) spares: Arc<Spares>,
}

/// One lease's open transaction and the rows it holds.
pub(crate) struct Held {
    pub(super) txn: Txn,
    /// Unsettled rows: message id → `ctid`, the cheapest way back to a row this transaction
    /// has locked.
    pub(super) open: HashMap<MessageId, Tid>,
    /// When the lease ends; unsettled rows get this as their `claimed_until`.
    pub(super) expires_at: UnixMillis,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held").field("open", &self.open.len()).field("expires_at", &self.expires_at).finish()
    }
}

impl Held {
    /// Ends the transaction with `end` (`COMMIT` or `ROLLBACK`) and begins the next claim's
    /// in the same round trip; the slot frees up and the new transaction waits for that claim.
    pub(super) async fn finish(self, held: &HeldClaims, end: &'static str) -> std::result::Result<(), sqlx::Error> {
        let Held { mut txn, .. } = self;
        txn.renew(end).await?;
        held.spares.keep(txn);
        Ok(())
    }

    /// Deletes the whole claim with `statement` (its `ctid`s as `$1`), commits and begins the
    /// next claim's transaction, in one round trip; returns the rows deleted.
    pub(super) async fn settle_all(
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

/// Whether a settle statement can run prepared ([`Txn::settle_and_renew`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Prepared {
    /// Its only value is the `ctid` list, bound as `$1`.
    ByTids,
    /// It has other values (such as error texts): sent on its own, values bound.
    No,
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

    pub(super) fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, Held>> {
        self.claims.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the claim of `token` out while a statement runs in it (a transaction runs one
    /// statement at a time). Expired claims are dropped on the way, which rolls them back;
    /// Postgres has usually ended them already through the idle timeout.
    pub(super) fn take(&self, token: Uuid) -> Option<Held> {
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

    pub(super) fn put(&self, token: Uuid, claim: Held) {
        self.lock().insert(token, claim);
    }

    /// Rows held by this store's open claims.
    pub(crate) fn open_rows(&self) -> u64 {
        self.lock().values().map(|h| h.open.len() as u64).sum()
    }
}
