//! The connections held claims may take from one pool: at most half of it, shared by every
//! store on the pool.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use sea_orm::sqlx::PgPool;

/// Connections that held claims, and the transactions kept for the next ones, have taken
/// from one pool: at most half of it, whichever stores on the pool took them.
#[derive(Debug)]
pub(crate) struct PoolShare {
    pub(super) taken: AtomicUsize,
    pub(super) capacity: usize,
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

    pub(super) fn reserve(self: &Arc<Self>) -> Option<Slot> {
        self.taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.capacity).then_some(n + 1))
            .ok()
            .map(|_| Slot(self.clone()))
    }
}

/// A connection taken from a pool's [`PoolShare`], given back on drop.
#[derive(Debug)]
pub(super) struct Slot(Arc<PoolShare>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Ordering::AcqRel);
    }
}
