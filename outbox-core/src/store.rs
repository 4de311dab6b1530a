//! The relay side of storage: claim, complete and fail messages; inspect and replay dead letters.

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use crate::error::Result;
use crate::message::{MessageId, NewMessage, OutboxMessage, UnixMillis};

/// An exclusive, expiring claim on messages, held by one relay worker.
///
/// Stores record the token with each claimed row; `complete` and `fail` only touch rows
/// that still carry it, so a relay whose claim expired cannot undo another relay's work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Identifies the claimer.
    pub token: Uuid,
    /// How long the claim holds before another relay may take the messages over.
    pub ttl: Duration,
}

impl Lease {
    /// A fresh lease token with the given time to live.
    pub fn new(ttl: Duration) -> Self {
        Self { token: Uuid::now_v7(), ttl }
    }
}

/// What to do with a message whose publish failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Make it eligible again after this delay (attempts + 1).
    RetryAfter(Duration),
    /// Move it to the dead-letter state (attempts + 1); it stays there until replayed.
    DeadLetter,
}

/// A failed publish, as the engine reports it to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The message.
    pub id: MessageId,
    /// The error, kept as `last_error`.
    pub error: String,
    /// Retry later, or dead-letter now.
    pub disposition: Disposition,
}

/// What `complete` does with a published message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Retention {
    /// Delete the row (default): the table holds only work still to do.
    #[default]
    Delete,
    /// Keep the row, marked published with a time, for audit; purge it later.
    KeepPublished,
}

/// Counts for monitoring.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct OutboxStats {
    /// Messages not yet published and not dead (claimed ones included).
    pub pending: u64,
    /// Of the pending, those under an unexpired claim.
    pub claimed: u64,
    /// Dead letters.
    pub dead: u64,
    /// Age of the oldest pending message, if any.
    pub oldest_pending_age: Option<Duration>,
}

/// A dead-lettered message and when it died.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message, with `attempts` and `last_error`.
    pub message: OutboxMessage,
    /// When it was dead-lettered.
    pub dead_at: UnixMillis,
}

/// Which dead letters to list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetterQuery {
    /// Only these ids (empty: any).
    pub ids: Vec<MessageId>,
    /// Only this topic.
    pub topic: Option<String>,
    /// At most this many, oldest first.
    pub limit: usize,
}

impl Default for DeadLetterQuery {
    fn default() -> Self {
        Self { ids: Vec::new(), topic: None, limit: 100 }
    }
}

/// Which dead letters to replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplaySelector {
    /// These ids; ids that are not dead are left alone.
    Ids(Vec<MessageId>),
    /// Every dead letter of this topic.
    Topic(String),
    /// Every dead letter.
    All,
}

/// Storage as the relay sees it: enqueue, claim, settle, and the counts its gauges report.
///
/// Rules every implementation keeps (the `testkit` conformance suite checks them):
/// - A claim is exclusive across processes until its lease expires.
/// - A message is claimable only when it is pending, not under an unexpired claim, due
///   (`retry` time passed) and the **head of its key**: no earlier message with the same
///   key is pending or dead. Messages without a key are always head.
/// - A claim by [`claim_due`](OutboxStore::claim_due) may also take the messages right
///   after a head, a **run** of its key: the head and the next pending ones, consecutive,
///   never one without every earlier pending message of its key. The relay publishes a run
///   in order, one message per key at a time, and gives back ([`release`](OutboxStore::release))
///   what follows a failure.
/// - `complete` and `fail` only affect rows still claimed by the given lease.
///
/// Transactional enqueue depends on the backend's transaction type, so adapters offer it as
/// an inherent method; [`OutboxStore::enqueue`] is the auto-commit convenience.
#[async_trait]
pub trait OutboxStore: Send + Sync + Debug + 'static {
    /// Writes messages in their own transaction (not the caller's), returning their ids.
    async fn enqueue(&self, messages: Vec<NewMessage>) -> Result<Vec<MessageId>>;

    /// Claims those of `ids` that are claimable now (listener path).
    async fn claim_ids(&self, ids: &[MessageId], lease: &Lease) -> Result<Vec<OutboxMessage>>;

    /// Of `ids`, those a claim by id could still take, now or once their key's head is done:
    /// pending, and not under another live claim. The listener asks it about ids it could not
    /// claim, to forget those another relay published or holds (that relay settles them; a
    /// failure goes to backoff and the fallback) instead of retrying them. A store may keep
    /// claimed ids it cannot tell apart; the default keeps all, which is always safe: the
    /// listener then retries them a bounded number of times.
    async fn retryable_among(&self, ids: &[MessageId]) -> Result<Vec<MessageId>> {
        Ok(ids.to_vec())
    }

    /// Claims up to `limit` claimable messages, in `seq` order (fallback path), heads or runs
    /// of their keys. A message never attempted must be at least `min_age` old; retries and
    /// expired claims need only be due.
    async fn claim_due(&self, limit: usize, min_age: Duration, lease: &Lease) -> Result<Vec<OutboxMessage>>;

    /// Gives back claimed messages that were not published (they follow a failed message of
    /// their key in the same run), untouched: no attempt counted, claimable again at once.
    /// The default does nothing, and their claims expire; a store whose claims return runs
    /// should release them, so their key is not held up for a claim's ttl.
    async fn release(&self, ids: &[MessageId], lease: &Lease) -> Result<()> {
        let _ = (ids, lease);
        Ok(())
    }

    /// Marks published messages done (deleted or kept, per the store's [`Retention`]).
    /// Returns how many were still held by `lease`.
    async fn complete(&self, ids: &[MessageId], lease: &Lease) -> Result<u64>;

    /// Records failed publishes: attempts + 1, `last_error`, and a retry time or the dead state.
    async fn fail(&self, failures: &[Failure], lease: &Lease) -> Result<()>;

    /// Counts for monitoring.
    async fn stats(&self) -> Result<OutboxStats>;

    /// A relay on this store started ([`Relay::spawn`](crate::Relay::spawn) calls it). The
    /// default does nothing; a store that wraps another passes it on.
    fn relay_started(&self) {}

    /// A relay on this store stopped, its engines finished
    /// ([`RelayHandle::shutdown`](crate::RelayHandle::shutdown) calls it). A store that holds
    /// something for its relays, such as key partitions, hands it over when the last one
    /// stops, so other relays take over at once instead of after a lease expires. The default
    /// does nothing; a store that wraps another passes it on.
    async fn relay_stopped(&self) {}
}

/// What operators need besides the relay's methods: per-key backlog, dead letters, replay and
/// purges. The `outbox` CLI and dashboard use it; a relay needs only [`OutboxStore`]. An
/// `Arc<dyn OutboxAdmin>` coerces to the `Arc<dyn OutboxStore>` a relay takes.
#[async_trait]
pub trait OutboxAdmin: OutboxStore {
    /// The keys with the most pending messages, largest first.
    async fn key_backlog(&self, limit: usize) -> Result<Vec<(String, u64)>>;

    /// Lists dead letters.
    async fn dead_letters(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>>;

    /// Makes dead letters pending again with attempts reset; returns how many.
    async fn replay(&self, selector: &ReplaySelector) -> Result<u64>;

    /// Deletes dead letters that died more than `older_than` ago; returns how many.
    async fn purge_dead(&self, older_than: Duration) -> Result<u64>;

    /// Deletes up to `limit` published rows (kept by [`Retention::KeepPublished`]) older
    /// than `older_than`; call it in a loop to purge in bounded batches.
    async fn purge_published(&self, older_than: Duration, limit: usize) -> Result<u64>;
}
