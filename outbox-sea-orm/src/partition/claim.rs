//! Claims of keyed messages from the partitions a store holds.
//!
//! No other relay claims from those partitions, so a key's first pending rows are its first
//! rows among the first pending rows of its partition, or of all the held partitions. A claim
//! reads those rows ([`Read`]: oldest first when the store holds every partition, else a few
//! per partition) and plans a **run** per key: its first rows, in `seq` order, up to the
//! first one not claimable now. Keys in flight in this store, or whose
//! head is backing off or too young, get none. It claims the runs in one statement, which
//! checks each row's lease and partition, and what the candidates cannot show: that no dead
//! row comes earlier in its key (nor, while a writer from before partitions leaves rows
//! without one, such a row). What the claim skipped (a row locked or claimed since the read)
//! cuts its key's run there: the rows after it are released at once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use outbox_core::message::{duration_millis, now_millis};
use outbox_core::{Lease, MessageId, OutboxMessage, Result, UnixMillis};

use super::KeyId;
use crate::SqlStore;
#[cfg(feature = "postgres")]
use crate::sql::Dialect;
use crate::sql::Query;
use crate::store::decode::Row;
use crate::store::limit_value;
use crate::store::pick::Pick;

/// Partitions per candidate statement on MySQL and SQLite (one `UNION ALL` arm each;
/// SQLite allows 500).
const PARTITIONS_PER_STATEMENT: usize = 200;

impl SqlStore {
    /// Claims up to `limit` keyed messages, runs of their keys, from the held partitions.
    pub(crate) async fn claim_keyed(
        &self,
        created_before: UnixMillis,
        limit: usize,
        lease: &Lease,
    ) -> Result<Vec<OutboxMessage>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let owned = self.held_partitions().await;
        if owned.is_empty() {
            // No probe ran: the window sweep must look.
            self.unpartitioned_pending.store(true, Ordering::Relaxed);
            return Ok(Vec::new());
        }
        let own = self.ownership.as_ref().expect("partitions are held");
        let claiming = own.claiming.lock().await;
        let now = now_millis();
        let (in_flight, rows_in_flight) = own.keys_in_flight(now);
        // Read in `seq` order, the held rows would be read past keyless ones pending (by the
        // index of all pending rows); those were not there at the last probe.
        let rows = own.candidate_rows(limit, rows_in_flight);
        let all_held = owned.len() == usize::from(own.partitions);
        let read = if all_held && !self.unpartitioned_pending.load(Ordering::Relaxed) {
            Read::Oldest(rows.clamp(4, limit.max(4).saturating_mul(owned.len())))
        } else {
            Read::EachPartition(rows.div_ceil(owned.len()).clamp(4, limit.max(4)))
        };
        let (candidates, unpartitioned) = self.first_pending(&owned, read, now, created_before).await?;
        self.unpartitioned_pending.store(unpartitioned, Ordering::Relaxed);
        let (asked, read_rows) = (read.rows(owned.len()), candidates.len());
        let plan = Plan::new(candidates, &in_flight, limit);
        if read_rows >= asked {
            own.candidates_used(read_rows, rows_in_flight, plan.usable);
        }
        if plan.seqs.is_empty() {
            return Ok(Vec::new());
        }
        let pick = Pick::Runs { seqs: &plan.seqs, created_before, unpartitioned };
        let (claimed, cut) = plan.split(self.claim_rows(pick, lease).await?);
        let claimed: Vec<OutboxMessage> = claimed.into_iter().map(|r| r.message).collect();
        own.claimed(&claimed, now_millis().saturating_add(duration_millis(lease.ttl)));
        drop(claiming);
        if !cut.is_empty() {
            let ids: Vec<MessageId> = cut.iter().map(|r| r.message.id).collect();
            tracing::debug!(rows = ids.len(), "releasing rows whose run was cut by a concurrent claim");
            self.release_claimed(&ids, lease).await?;
        }
        Ok(claimed)
    }

    /// The first pending rows of `partitions`, as `read` says, and whether a pending row
    /// without a partition exists (one more index probe in the same round trip: a row with no
    /// `partition_no`).
    async fn first_pending(
        &self,
        partitions: &[i32],
        read: Read,
        now: UnixMillis,
        created_before: UnixMillis,
    ) -> Result<(Vec<Candidate>, bool)> {
        let mut found = Vec::new();
        let mut unpartitioned = false;
        for q in self.candidate_reads(partitions, read, now, created_before) {
            for row in self.fetch(&self.db, q).await? {
                let seq = row.try_get_by_index::<i64>(0).map_err(|e| self.db_err(e))?;
                if row.try_get_by_index::<Option<i32>>(2).map_err(|e| self.db_err(e))?.is_none() {
                    unpartitioned = true;
                    continue;
                }
                let ready = match row.try_get_by_index::<i32>(3) {
                    Ok(flag) => flag != 0,
                    Err(_) => row.try_get_by_index::<i64>(3).map_err(|e| self.db_err(e))? != 0,
                };
                // A keyed row always has a key; a row without one here is skipped, not claimed.
                if let Ok(key) = row.try_get_by_index::<String>(1) {
                    found.push(Candidate { seq, key: KeyId::of(&key), ready });
                }
            }
        }
        Ok((found, unpartitioned))
    }

    /// The statements of [`first_pending`](Self::first_pending): `seq`, `msg_key`,
    /// `partition_no` and a `ready` flag per row.
    pub(crate) fn candidate_reads(
        &self,
        partitions: &[i32],
        read: Read,
        now: UnixMillis,
        created_before: UnixMillis,
    ) -> Vec<Query> {
        // The columns the `ready` flag is computed from, once per statement.
        let columns = "seq, msg_key, partition_no, available_at, claimed_until, attempts, created_at";
        // `SELECT <columns>` of the first `limit` pending rows that `filter` selects.
        let first_pending = |q: &mut Query, filter: &dyn Fn(&mut Query), limit: usize, alias: &str| {
            q.push("SELECT ").push(columns).push(" FROM (SELECT ").push(columns).push(" FROM ");
            q.push(&self.table).push(" WHERE ");
            filter(q);
            q.push(" AND status = 0 ORDER BY seq LIMIT ").bind(limit_value(limit)).push(") ").push(alias);
        };
        let probe = |q: &mut Query| {
            first_pending(q, &|q| _ = q.push("partition_no IS NULL"), 1, "unpartitioned");
        };
        // Claimable now, as the claim will check it (the age rule of a sweep included).
        let select_ready = |q: &mut Query| {
            q.push("SELECT seq, msg_key, partition_no, CASE WHEN ");
            Self::push_due_and_free(q, "", now);
            q.push(" AND ");
            Self::push_old_enough(q, "", created_before);
            q.push(" THEN 1 ELSE 0 END FROM (");
        };
        match (read, self.dialect) {
            (Read::Oldest(rows), _) => {
                let mut q = Query::new(self.dialect);
                select_ready(&mut q);
                probe(&mut q);
                q.push(" UNION ALL ");
                first_pending(&mut q, &|q| _ = q.push("partition_no IS NOT NULL"), rows, "held");
                q.push(") candidates");
                vec![q]
            }
            #[cfg(feature = "postgres")]
            (Read::EachPartition(per), Dialect::Postgres) => {
                let mut q = Query::new(self.dialect);
                select_ready(&mut q);
                q.push("SELECT x.* FROM unnest(")
                    .bind(partitions.to_vec())
                    .push("::int[]) AS o(p) CROSS JOIN LATERAL (SELECT ")
                    .push(columns)
                    .push(" FROM ")
                    .push(&self.table)
                    .push(" w WHERE w.partition_no = o.p AND w.status = 0 ORDER BY w.seq LIMIT ")
                    .bind(limit_value(per))
                    .push(") x UNION ALL ");
                probe(&mut q);
                q.push(") candidates");
                vec![q]
            }
            (Read::EachPartition(per), _) => partitions
                .chunks(PARTITIONS_PER_STATEMENT)
                .enumerate()
                .map(|(n, chunk)| {
                    let mut q = Query::new(self.dialect);
                    select_ready(&mut q);
                    if n == 0 {
                        probe(&mut q);
                    }
                    for (i, &p) in chunk.iter().enumerate() {
                        if i > 0 || n == 0 {
                            q.push(" UNION ALL ");
                        }
                        first_pending(&mut q, &|q| _ = q.push("partition_no = ").bind(p), per, &format!("p{i}"));
                    }
                    q.push(") candidates");
                    q
                })
                .collect(),
        }
    }
}

/// How a keyed claim reads the first pending rows of the partitions it holds.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Read {
    /// This many, oldest first, of every partition at once: the store holds them all. One
    /// range of the index of pending rows, in `seq` order, so the rows lie on few heap pages;
    /// a key's first rows among them are its first pending rows.
    Oldest(usize),
    /// This many of each partition (an index range each): the rows of a few partitions are
    /// spread over the table, but reading them together would read the others' too.
    EachPartition(usize),
}

impl Read {
    /// The rows the read asks for, over `partitions` held partitions.
    fn rows(self, partitions: usize) -> usize {
        match self {
            Self::Oldest(rows) => rows,
            Self::EachPartition(per) => per.saturating_mul(partitions),
        }
    }
}

/// A pending row of a held partition, as the candidate read found it.
#[derive(Clone, Debug)]
struct Candidate {
    seq: i64,
    key: KeyId,
    /// Claimable now: due, not under a live claim, old enough for the sweep.
    ready: bool,
}

/// The rows a keyed claim asks for: runs of keys, taken breadth first up to the limit (every
/// key's head, oldest first, then every key's second row, and so on), so that the batch
/// spans many keys and few publish waves; of fewer free keys than the limit, the oldest
/// half-limit. A prefix of a run is a run.
#[derive(Debug)]
struct Plan {
    /// The planned rows, ascending.
    seqs: Vec<i64>,
    /// Each planned row's key and place in its run.
    place: HashMap<i64, (KeyId, usize)>,
    /// The rows the plan could have taken with no limit: its keys' runs, whole.
    usable: usize,
}

impl Plan {
    fn new(mut candidates: Vec<Candidate>, in_flight: &HashSet<KeyId>, limit: usize) -> Self {
        candidates.sort_unstable_by_key(|c| c.seq);
        // Keys in head order, each with its run so far and whether the run has ended.
        let mut runs: Vec<(KeyId, Vec<i64>, bool)> = Vec::new();
        let mut index: HashMap<KeyId, usize> = HashMap::with_capacity(candidates.len());
        for c in candidates {
            let i = *index.entry(c.key).or_insert_with(|| {
                runs.push((c.key, Vec::new(), in_flight.contains(&c.key)));
                runs.len() - 1
            });
            let (_, run, ended) = &mut runs[i];
            if *ended || !c.ready {
                *ended = true;
            } else {
                run.push(c.seq);
            }
        }
        runs.retain(|(_, run, _)| !run.is_empty());
        // Keys fewer than the batch: half a batch of them at most, deeper, so that a
        // concurrent claim (the sweep's other worker) finds keys left to take. Taking every
        // free key made the claims take turns instead of overlapping.
        if runs.len() <= limit {
            runs.truncate(limit.div_ceil(2));
        }
        let usable = runs.iter().map(|(_, run, _)| run.len()).sum();
        let mut seqs = Vec::with_capacity(limit);
        let mut place = HashMap::with_capacity(limit);
        let deepest = runs.iter().map(|(_, run, _)| run.len()).max().unwrap_or(0);
        'depths: for depth in 0..deepest {
            for (key, run, _) in &runs {
                if seqs.len() == limit {
                    break 'depths;
                }
                if let Some(&seq) = run.get(depth) {
                    seqs.push(seq);
                    place.insert(seq, (*key, depth));
                }
            }
        }
        seqs.sort_unstable();
        Self { seqs, place, usable }
    }

    /// Splits claimed rows into those that keep their place, every row before them in their
    /// run claimed too, and the rest (in runs that the claim cut short). Unplanned rows are
    /// not kept.
    fn split(&self, mut rows: Vec<Row>) -> (Vec<Row>, Vec<Row>) {
        rows.sort_unstable_by_key(|r| r.seq);
        let mut next: HashMap<KeyId, usize> = HashMap::with_capacity(self.place.len());
        rows.into_iter().partition(|r| match self.place.get(&r.seq) {
            Some((key, n)) => {
                let next = next.entry(*key).or_default();
                let keeps = *next == *n;
                *next += usize::from(keeps);
                keeps
            }
            None => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(seq: i64, key: &str, ready: bool) -> Candidate {
        Candidate { seq, key: KeyId::of(key), ready }
    }

    #[test]
    fn a_plan_takes_every_key_s_head_before_any_second_row() {
        // Keys a to f, two rows each, in `seq` order a1 b1 … f1 a2 b2 … f2.
        let keys = ["a", "b", "c", "d", "e", "f"];
        let mut candidates: Vec<Candidate> = keys.iter().zip(1..).map(|(k, seq)| candidate(seq, k, true)).collect();
        candidates.extend(keys.iter().zip(7..).map(|(k, seq)| candidate(seq, k, true)));
        let plan = Plan::new(candidates.clone(), &HashSet::new(), 5);
        assert_eq!(plan.seqs, vec![1, 2, 3, 4, 5], "more keys than the batch: heads only, oldest first");
        let plan = Plan::new(candidates, &HashSet::new(), 8);
        assert_eq!(plan.seqs, vec![1, 2, 3, 4, 7, 8, 9, 10], "4 keys (half of 8), two deep");
        assert_eq!(plan.place[&8], (KeyId::of("b"), 1));
    }

    #[test]
    fn a_plan_over_fewer_keys_than_the_batch_leaves_half_of_them() {
        let candidates: Vec<Candidate> =
            (1..=40).map(|seq| candidate(seq, ["a", "b", "c", "d"][seq as usize % 4], true)).collect();
        let plan = Plan::new(candidates, &HashSet::new(), 4);
        let keys: HashSet<KeyId> = plan.seqs.iter().map(|s| plan.place[s].0).collect();
        assert_eq!(plan.seqs.len(), 4);
        assert_eq!(keys, [KeyId::of("b"), KeyId::of("c")].into(), "the two oldest heads, for half the batch, two deep");
    }

    #[test]
    fn a_plan_stops_a_run_at_a_row_that_is_not_ready_and_skips_keys_in_flight() {
        let candidates = vec![
            candidate(1, "a", true),
            candidate(2, "a", false),
            candidate(3, "a", true),
            candidate(4, "b", true),
            candidate(5, "c", false),
            candidate(6, "c", true),
        ];
        let in_flight: HashSet<KeyId> = [KeyId::of("b")].into();
        let plan = Plan::new(candidates, &in_flight, 10);
        assert_eq!(plan.seqs, vec![1], "a stops at 2; b is in flight; c's head is not ready");
    }
}
