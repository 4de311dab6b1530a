//! Key partitions: keyed messages are hashed into a fixed number of partitions at enqueue,
//! and relays share the partitions through leases kept in the database.
//!
//! A relay claims keyed messages only from the partitions it holds, so no other relay can
//! touch those keys, and it finds each key's head among the first pending rows of each
//! partition instead of checking every candidate row for an earlier one of its key
//! ([`claim`]). Messages without a key are claimed by every relay, as before partitions.
//!
//! Two small tables sit beside the outbox table ([`leases`]): `<table>_partitions`, one row
//! per partition (`owner`, `epoch`, `lease_until`), and `<table>_relays`, one row per live
//! relay (`owner`, `alive_until`). Each store (one per [`SqlStore::new`](crate::SqlStore::new);
//! clones share it) is one owner. Its claims renew its hold every third of the lease TTL; on
//! each renewal it counts the live relays, keeps its fair share (the partitions divided by
//! the relays, the remainder going to the oldest), releases what is above it and takes free
//! or expired partitions up to it. Every claim checks in SQL that the store still holds the
//! row's partition, so a relay whose lease lapsed cannot claim from it; every settle checks
//! the row's own claim token as before. A partition's `epoch` counts its hand-overs.

pub(crate) mod claim;
mod leases;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use std::collections::{HashMap, HashSet};

use outbox_core::message::duration_millis;
use outbox_core::{MessageId, OutboxMessage, UnixMillis};
use uuid::Uuid;

use crate::sql::Dialect;

/// The partition of `key` among `partitions`: FNV-1a (32 bit) of the key's UTF-8 bytes,
/// modulo the count. Part of the table format: a writer that inserts rows itself (another
/// language, a bulk load) must store this in `partition_no`.
///
/// ```
/// assert_eq!(outbox_sea_orm::schema::partition_of("order-42", 256), 244);
/// ```
pub fn partition_of(key: &str, partitions: u16) -> i32 {
    const OFFSET: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    let hash = key.bytes().fold(OFFSET, |h, b| (h ^ u32::from(b)).wrapping_mul(PRIME));
    // `partitions` > 0 and ≤ 4096, so the value fits an i32.
    (hash % u32::from(partitions.max(1))) as i32
}

/// A key as a keyed claim plans with it: a 64-bit hash, so that planning copies no
/// strings. Two keys of one hash are planned as one key: a run may then take the other key's
/// rows too, in `seq` order, or wait while the other is in flight; neither publishes a key out
/// of order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct KeyId(u64);

impl KeyId {
    /// FNV-1a (64 bit) of the key's UTF-8 bytes.
    pub(crate) fn of(key: &str) -> Self {
        const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        Self(key.bytes().fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME)))
    }
}

/// One store's hold on partitions, shared by its clones.
#[derive(Debug)]
pub(crate) struct Ownership {
    /// This store as an owner of partitions.
    pub(crate) owner: Uuid,
    partitions: u16,
    ttl: Duration,
    /// `<table>_partitions` and `<table>_relays`, quoted.
    pub(crate) leases_table: String,
    relays_table: String,
    /// What the store last learned of its hold; refreshed by at most one claim at a time.
    view: tokio::sync::Mutex<View>,
    /// Relays running on this store; its hold is released when the last one stops.
    relays: AtomicUsize,
    /// Keys of this store's unsettled keyed claims, by message: a sweep skips their heads
    /// without asking the database (they are in flight, or wait behind one that is).
    in_flight: std::sync::Mutex<HashMap<MessageId, (KeyId, UnixMillis)>>,
    /// Held by a keyed claim from its candidate read until its keys are in flight: two at
    /// once would plan the same runs and take rows from each other's.
    pub(crate) claiming: tokio::sync::Mutex<()>,
    /// Candidate rows read, past those in flight, per row the plan could take, in
    /// thousandths, as of the last full read; 0 before one.
    read_per_usable: AtomicUsize,
}

/// The partitions held, as of the last renewal.
#[derive(Debug, Default)]
struct View {
    /// Held partitions, ascending.
    owned: Vec<i32>,
    /// Until when `owned` may be used (local clock); after it, claims renew first.
    valid_until: UnixMillis,
    /// When to renew next.
    renew_at: UnixMillis,
    /// The lease rows for every partition exist.
    seeded: bool,
}

impl Ownership {
    pub(crate) fn new(partitions: u16, ttl: Duration, tables: LeaseTables) -> Self {
        Self {
            owner: Uuid::now_v7(),
            partitions,
            ttl,
            leases_table: tables.leases,
            relays_table: tables.relays,
            view: tokio::sync::Mutex::default(),
            relays: AtomicUsize::new(0),
            in_flight: std::sync::Mutex::default(),
            claiming: tokio::sync::Mutex::default(),
            read_per_usable: AtomicUsize::new(0),
        }
    }

    /// How many pending rows a keyed claim of `limit` reads, `in_flight` rows of this store
    /// in flight. The rows in flight come first in their keys, and keys in flight give
    /// nothing: read past them, then a quarter more than the last read needed per row the
    /// plan took. Before a full read, and while nothing was free: twice the batch past them.
    /// Reading too little costs a short claim, which the next read corrects.
    pub(crate) fn candidate_rows(&self, limit: usize, in_flight: usize) -> usize {
        let wanted = limit.saturating_add(in_flight);
        match self.read_per_usable.load(Ordering::Relaxed) {
            0 => wanted.saturating_mul(2),
            per => in_flight.saturating_add(limit.saturating_mul(per).saturating_mul(5).div_ceil(4_000)),
        }
        .clamp(wanted, wanted.saturating_mul(4))
    }

    /// Learns from a read that returned every row it asked for: `read` rows, `in_flight`
    /// of them (at most) in flight, `usable` the plan could take.
    pub(crate) fn candidates_used(&self, read: usize, in_flight: usize, usable: usize) {
        let per = match usable {
            0 => 2_000,
            n => (read.saturating_sub(in_flight).max(1).saturating_mul(1_000) / n).clamp(1_000, 4_000),
        };
        self.read_per_usable.store(per, Ordering::Relaxed);
    }

    fn ttl_millis(&self) -> i64 {
        duration_millis(self.ttl)
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<MessageId, (KeyId, UnixMillis)>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records claimed keyed messages until they settle or their claim expires.
    pub(crate) fn claimed(&self, messages: &[OutboxMessage], until: UnixMillis) {
        let mut in_flight = self.in_flight();
        for m in messages {
            if let Some(key) = &m.key {
                in_flight.insert(m.id, (KeyId::of(key), until));
            }
        }
    }

    /// Forgets settled messages.
    pub(crate) fn settled(&self, ids: impl IntoIterator<Item = MessageId>) {
        let mut in_flight = self.in_flight();
        if in_flight.is_empty() {
            return;
        }
        for id in ids {
            in_flight.remove(&id);
        }
    }

    /// Keys with a live claim of this store, and how many messages those claims hold;
    /// expired claims are dropped on the way (the database decides about those).
    pub(crate) fn keys_in_flight(&self, now: UnixMillis) -> (HashSet<KeyId>, usize) {
        let mut in_flight = self.in_flight();
        in_flight.retain(|_, (_, until)| *until > now);
        (in_flight.values().map(|(key, _)| *key).collect(), in_flight.len())
    }

    pub(crate) fn relay_started(&self) {
        self.relays.fetch_add(1, Ordering::AcqRel);
    }

    /// True when the last relay on the store stopped.
    pub(crate) fn relay_stopped(&self) -> bool {
        self.relays.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_sub(1))) == Ok(1)
    }
}

/// The names of the lease tables of an outbox table, quoted for the dialect.
pub(crate) struct LeaseTables {
    pub(crate) leases: String,
    pub(crate) relays: String,
}

impl LeaseTables {
    pub(crate) fn of(dialect: Dialect, table: &str) -> Self {
        Self { leases: dialect.quote(&leases_table(table)), relays: dialect.quote(&relays_table(table)) }
    }
}

/// `<table>_partitions`: a row per partition.
pub(crate) fn leases_table(table: &str) -> String {
    format!("{table}_partitions")
}

/// `<table>_relays`: a row per live relay.
pub(crate) fn relays_table(table: &str) -> String {
    format!("{table}_relays")
}

/// The fair share of `partitions` for the relay at `index` of `relays` (sorted by owner id,
/// so the oldest relays take the remainder).
fn fair_share(partitions: u16, relays: usize, index: usize) -> usize {
    let (p, n) = (usize::from(partitions), relays.max(1));
    p / n + usize::from(index < p % n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_follow_fnv1a() {
        // FNV-1a 32 of "a" is 0xe40c292c; of "" the offset basis.
        assert_eq!(partition_of("a", 4096), (0xe40c_292c_u32 % 4096) as i32);
        assert_eq!(partition_of("", 256), (0x811c_9dc5_u32 % 256) as i32);
        let spread: std::collections::HashSet<i32> =
            (0..10_000).map(|k| partition_of(&format!("key-{k}"), 256)).collect();
        assert_eq!(spread.len(), 256, "10,000 keys cover every partition");
    }

    #[test]
    fn a_keyed_claim_reads_what_the_last_full_read_needed_and_a_quarter_more() {
        let tables = LeaseTables { leases: "l".into(), relays: "r".into() };
        let own = Ownership::new(256, Duration::from_secs(10), tables);
        assert_eq!(own.candidate_rows(1_000, 900), 3_800, "before a full read: twice the batch past those in flight");
        // Many keys: every row past those in flight a free head.
        own.candidates_used(3_800, 900, 2_900);
        assert_eq!(own.candidate_rows(1_000, 900), 2_150);
        // Fewer keys: half the rows past those in flight are of keys in flight.
        own.candidates_used(2_150, 900, 625);
        assert_eq!(own.candidate_rows(1_000, 900), 900 + 2_500);
        // Hardly anything free: at most 4 × the batch and those in flight.
        own.candidates_used(10_000, 0, 100);
        assert_eq!(own.candidate_rows(1_000, 0), 4_000);
        own.candidates_used(4_000, 1_000, 0);
        assert_eq!(own.candidate_rows(1_000, 1_000), 3_500, "nothing free: two rows read per row");
    }

    #[test]
    fn fair_shares_add_up() {
        for relays in 1..=7 {
            let total: usize = (0..relays).map(|i| fair_share(256, relays, i)).sum();
            assert_eq!(total, 256, "{relays} relays");
        }
        assert_eq!(fair_share(256, 3, 0), 86);
        assert_eq!(fair_share(256, 3, 2), 85);
    }
}
