//! In-memory store and bus: for the quickstart, for unit tests of the engines, and as the
//! reference implementation of the store rules (the conformance suite runs against it).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use uuid::Uuid;

use crate::bus::{Bus, PublishOutcome};
use crate::error::{Error, Result};
use crate::message::{MessageId, NewMessage, OutboxMessage, UnixMillis, duration_millis, now_millis};
use crate::store::{
    DeadLetter, DeadLetterQuery, Disposition, Failure, Lease, OutboxAdmin, OutboxStats, OutboxStore, ReplaySelector,
    Retention,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Pending,
    Published(UnixMillis),
    Dead(UnixMillis),
}

#[derive(Debug)]
struct Row {
    msg: OutboxMessage,
    status: Status,
    available_at: UnixMillis,
    claim: Option<(Uuid, UnixMillis)>,
}

impl Row {
    fn claim_free(&self, now: UnixMillis) -> bool {
        self.claim.is_none_or(|(_, until)| until <= now)
    }
    fn held_by(&self, lease: &Lease, now: UnixMillis) -> bool {
        self.status == Status::Pending && self.claim.is_some_and(|(t, until)| t == lease.token && until > now)
    }
}

#[derive(Debug, Default)]
struct State {
    next_seq: u64,
    rows: BTreeMap<u64, Row>,
    by_id: HashMap<MessageId, u64>,
    /// Per key, the seqs not yet published (pending or dead): the head is the first.
    unfinished: HashMap<String, BTreeSet<u64>>,
}

impl State {
    fn is_head(&self, seq: u64, row: &Row) -> bool {
        match &row.msg.key {
            None => true,
            Some(k) => self.unfinished.get(k).and_then(|s| s.first()) == Some(&seq),
        }
    }

    fn claimable(&self, seq: u64, row: &Row, now: UnixMillis) -> bool {
        row.status == Status::Pending && row.available_at <= now && row.claim_free(now) && self.is_head(seq, row)
    }

    fn finish(&mut self, seq: u64) {
        let key = self.rows.get(&seq).and_then(|r| r.msg.key.clone());
        if let Some(k) = key
            && let Some(set) = self.unfinished.get_mut(&k)
        {
            set.remove(&seq);
            if set.is_empty() {
                self.unfinished.remove(&k);
            }
        }
    }

    fn remove(&mut self, seq: u64) {
        self.finish(seq);
        if let Some(row) = self.rows.remove(&seq) {
            self.by_id.remove(&row.msg.id);
        }
    }
}

/// An [`OutboxStore`] in a mutex. It follows every store rule, including per-key order and
/// claim leases, but keeps nothing across restarts.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    retention: Retention,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore").field("retention", &self.retention).finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store that deletes published messages.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store with the given retention.
    pub fn with_retention(retention: Retention) -> Self {
        Self { retention, ..Self::default() }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn claim_where(&self, limit: usize, lease: &Lease, pick: impl Fn(&Row, UnixMillis) -> bool) -> Vec<OutboxMessage> {
        let now = now_millis();
        let mut st = self.lock();
        let seqs: Vec<u64> = st
            .rows
            .iter()
            .filter(|(seq, row)| pick(row, now) && st.claimable(**seq, row, now))
            .map(|(seq, _)| *seq)
            .take(limit)
            .collect();
        let until = now + duration_millis(lease.ttl);
        let mut claimed = Vec::with_capacity(seqs.len());
        for seq in seqs {
            if let Some(row) = st.rows.get_mut(&seq) {
                row.claim = Some((lease.token, until));
                claimed.push(row.msg.clone());
            }
        }
        claimed
    }
}

#[async_trait]
impl OutboxStore for MemoryStore {
    async fn enqueue(&self, messages: Vec<NewMessage>) -> Result<Vec<MessageId>> {
        for m in &messages {
            m.validate()?;
        }
        let now = now_millis();
        let mut st = self.lock();
        if let Some(dup) = messages.iter().find(|m| st.by_id.contains_key(&m.id)) {
            return Err(Error::invalid_message(dup.id, "a message with this id is already stored"));
        }
        let mut ids = Vec::with_capacity(messages.len());
        for m in messages {
            st.next_seq += 1;
            let seq = st.next_seq;
            ids.push(m.id);
            st.by_id.insert(m.id, seq);
            if let Some(k) = &m.key {
                st.unfinished.entry(k.clone()).or_default().insert(seq);
            }
            let row =
                Row { msg: OutboxMessage::from_new(m, now), status: Status::Pending, available_at: now, claim: None };
            st.rows.insert(seq, row);
        }
        Ok(ids)
    }

    async fn claim_ids(&self, ids: &[MessageId], lease: &Lease) -> Result<Vec<OutboxMessage>> {
        let wanted: std::collections::HashSet<_> = ids.iter().collect();
        Ok(self.claim_where(ids.len(), lease, |row, _| wanted.contains(&row.msg.id)))
    }

    async fn retryable_among(&self, ids: &[MessageId]) -> Result<Vec<MessageId>> {
        let now = now_millis();
        let st = self.lock();
        let retryable = |id: &&MessageId| {
            st.by_id
                .get(*id)
                .and_then(|seq| st.rows.get(seq))
                .is_some_and(|r| r.status == Status::Pending && r.claim_free(now))
        };
        Ok(ids.iter().filter(retryable).copied().collect())
    }

    async fn claim_due(&self, limit: usize, min_age: Duration, lease: &Lease) -> Result<Vec<OutboxMessage>> {
        let min_age = duration_millis(min_age);
        Ok(self.claim_where(limit, lease, |row, now| {
            row.msg.attempts > 0 || row.msg.created_at <= now - min_age || row.claim.is_some()
        }))
    }

    async fn complete(&self, ids: &[MessageId], lease: &Lease) -> Result<u64> {
        let now = now_millis();
        let mut st = self.lock();
        let mut held = 0;
        for id in ids {
            let Some(&seq) = st.by_id.get(id) else { continue };
            if !st.rows.get(&seq).is_some_and(|r| r.held_by(lease, now)) {
                continue;
            }
            held += 1;
            match self.retention {
                Retention::Delete => st.remove(seq),
                Retention::KeepPublished => {
                    st.finish(seq);
                    if let Some(row) = st.rows.get_mut(&seq) {
                        row.status = Status::Published(now);
                        row.claim = None;
                    }
                }
            }
        }
        Ok(held)
    }

    async fn fail(&self, failures: &[Failure], lease: &Lease) -> Result<()> {
        let now = now_millis();
        let mut st = self.lock();
        for f in failures {
            let Some(&seq) = st.by_id.get(&f.id) else { continue };
            let Some(row) = st.rows.get_mut(&seq) else { continue };
            if !row.held_by(lease, now) {
                continue;
            }
            row.msg.attempts += 1;
            row.msg.last_error = Some(f.error.clone());
            row.claim = None;
            match f.disposition {
                Disposition::RetryAfter(d) => row.available_at = now + duration_millis(d),
                // Dead letters stay in `unfinished`: a dead head blocks its key until replayed.
                Disposition::DeadLetter => row.status = Status::Dead(now),
            }
        }
        Ok(())
    }

    async fn stats(&self) -> Result<OutboxStats> {
        let now = now_millis();
        let st = self.lock();
        let mut s = OutboxStats::default();
        let mut oldest: Option<UnixMillis> = None;
        for row in st.rows.values() {
            match row.status {
                Status::Pending => {
                    s.pending += 1;
                    if !row.claim_free(now) {
                        s.claimed += 1;
                    }
                    oldest = Some(oldest.map_or(row.msg.created_at, |o| o.min(row.msg.created_at)));
                }
                Status::Dead(_) => s.dead += 1,
                Status::Published(_) => {}
            }
        }
        s.oldest_pending_age = oldest.map(|c| Duration::from_millis((now - c).max(0) as u64));
        Ok(s)
    }
}

#[async_trait]
impl OutboxAdmin for MemoryStore {
    async fn key_backlog(&self, limit: usize) -> Result<Vec<(String, u64)>> {
        let st = self.lock();
        let mut counts: HashMap<&str, u64> = HashMap::new();
        for row in st.rows.values().filter(|r| r.status == Status::Pending) {
            if let Some(k) = &row.msg.key {
                *counts.entry(k).or_default() += 1;
            }
        }
        let mut v: Vec<(String, u64)> = counts.into_iter().map(|(k, n)| (k.to_owned(), n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(limit);
        Ok(v)
    }

    async fn dead_letters(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>> {
        let st = self.lock();
        Ok(st
            .rows
            .values()
            .filter_map(|r| match r.status {
                Status::Dead(at) => Some((r, at)),
                _ => None,
            })
            .filter(|(r, _)| query.ids.is_empty() || query.ids.contains(&r.msg.id))
            .filter(|(r, _)| query.topic.as_ref().is_none_or(|t| *t == r.msg.topic))
            .take(query.limit)
            .map(|(r, dead_at)| DeadLetter { message: r.msg.clone(), dead_at })
            .collect())
    }

    async fn replay(&self, selector: &ReplaySelector) -> Result<u64> {
        let now = now_millis();
        let mut st = self.lock();
        let mut n = 0;
        for row in st.rows.values_mut() {
            if !matches!(row.status, Status::Dead(_)) {
                continue;
            }
            let hit = match selector {
                ReplaySelector::Ids(ids) => ids.contains(&row.msg.id),
                ReplaySelector::Topic(t) => *t == row.msg.topic,
                ReplaySelector::All => true,
            };
            if hit {
                row.status = Status::Pending;
                row.msg.attempts = 0;
                row.available_at = now;
                row.claim = None;
                n += 1;
            }
        }
        Ok(n)
    }

    async fn purge_dead(&self, older_than: Duration) -> Result<u64> {
        let cutoff = now_millis() - duration_millis(older_than);
        let mut st = self.lock();
        let seqs: Vec<u64> = st
            .rows
            .iter()
            .filter(|(_, r)| matches!(r.status, Status::Dead(at) if at <= cutoff))
            .map(|(s, _)| *s)
            .collect();
        for &seq in &seqs {
            st.remove(seq);
        }
        Ok(seqs.len() as u64)
    }

    async fn purge_published(&self, older_than: Duration, limit: usize) -> Result<u64> {
        let cutoff = now_millis() - duration_millis(older_than);
        let mut st = self.lock();
        let seqs: Vec<u64> = st
            .rows
            .iter()
            .filter(|(_, r)| matches!(r.status, Status::Published(at) if at <= cutoff))
            .map(|(s, _)| *s)
            .take(limit)
            .collect();
        for &seq in &seqs {
            st.remove(seq);
        }
        Ok(seqs.len() as u64)
    }
}

/// Decides a message's outcome in a [`MemoryBus`]; `None` means publish normally.
pub type PublishHook = Arc<dyn Fn(&OutboxMessage) -> Option<PublishOutcome> + Send + Sync>;

/// A [`Bus`] that keeps every published message in memory, in publish order.
///
/// A hook can fail chosen messages, to test retries and dead letters.
#[derive(Clone)]
pub struct MemoryBus {
    published: Arc<Mutex<Vec<OutboxMessage>>>,
    count: Arc<watch::Sender<usize>>,
    hook: Option<PublishHook>,
}

impl fmt::Debug for MemoryBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBus").field("published", &self.len()).finish_non_exhaustive()
    }
}

impl Default for MemoryBus {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBus {
    /// An empty bus that accepts everything.
    pub fn new() -> Self {
        Self { published: Arc::default(), count: Arc::new(watch::channel(0).0), hook: None }
    }

    /// An empty bus whose `hook` may fail chosen messages.
    pub fn with_hook(hook: impl Fn(&OutboxMessage) -> Option<PublishOutcome> + Send + Sync + 'static) -> Self {
        Self { hook: Some(Arc::new(hook)), ..Self::new() }
    }

    /// Everything published so far, in order (duplicates included).
    pub fn messages(&self) -> Vec<OutboxMessage> {
        self.published.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many publishes succeeded so far.
    pub fn len(&self) -> usize {
        *self.count.borrow()
    }

    /// Whether nothing was published yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until at least `n` messages were published, or fails after `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Result<()> {
        let mut rx = self.count.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|c| *c >= n))
            .await
            .map_err(|_| {
                Error::temporary(
                    "memory-bus",
                    format!("only {} of {n} messages arrived within {timeout:?}", self.len()),
                    None,
                )
            })?
            .map(|_| ())
            .map_err(|e| Error::temporary("memory-bus", e.to_string(), None))
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<PublishOutcome> {
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut published = self.published.lock().unwrap_or_else(|e| e.into_inner());
        for msg in batch {
            let outcome = self.hook.as_ref().and_then(|h| h(msg)).unwrap_or(PublishOutcome::Published);
            if outcome.is_delivered() {
                published.push(msg.clone());
            }
            outcomes.push(outcome);
        }
        let n = published.len();
        drop(published);
        self.count.send_replace(n);
        outcomes
    }
}
