//! Claims of keyed messages from the partitions a store holds.
//!
//! No other relay claims from those partitions, so each key's head is the first pending row
//! of its key among the first pending rows of its partition. A claim reads those few rows
//! per partition (an index range each), keeps the first row of each key, and claims those
//! that are claimable now. Rows behind an in-flight, backing-off or too-young head are never
//! candidates, and the per-row head-of-key check runs only on the heads, where it rules out
//! a dead letter (not pending, so not among the candidates) and rows enqueued without a
//! partition (by a writer that predates partitions).

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use outbox_core::message::{duration_millis, now_millis};
use outbox_core::{Lease, OutboxMessage, Result, UnixMillis};

use crate::SqlStore;
#[cfg(feature = "postgres")]
use crate::sql::Dialect;
use crate::sql::Query;
use crate::store::pick::Pick;

/// Partitions per candidate statement on MySQL and SQLite (one `UNION ALL` arm each;
/// SQLite allows 500).
const PARTITIONS_PER_STATEMENT: usize = 200;

impl SqlStore {
    /// Claims up to `limit` keyed messages, heads of their keys, from the held partitions.
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
        // Twice the batch, spread over the partitions: enough heads when keys are few per
        // partition, and a bounded read when they are not.
        let per_partition = (2 * limit).div_ceil(owned.len()).clamp(4, limit.max(4));
        let (candidates, unpartitioned) = self.first_pending(&owned, per_partition).await?;
        self.unpartitioned_pending.store(unpartitioned, Ordering::Relaxed);
        let own = self.ownership.as_ref().expect("partitions are held");
        let busy = own.keys_in_flight(now_millis());
        let heads: Vec<i64> =
            heads(candidates).into_iter().filter(|(_, key)| !busy.contains(key)).map(|(s, _)| s).collect();
        if heads.is_empty() {
            return Ok(Vec::new());
        }
        // With every key's head free and few keys, one claim would take them all and leave
        // nothing for the relay's other sweep workers until it settles: take half, so two
        // batches overlap (one publishes while the other claims or settles).
        let limit = if heads.len() >= limit { heads.len().div_ceil(2).min(limit) } else { limit };
        // Heads under another claim or backing off drop out in the claim, which takes the
        // oldest `limit` of the rest.
        let claimed = self.claim(Pick::Heads { seqs: &heads, created_before, limit }, lease).await?;
        own.claimed(&claimed, now_millis().saturating_add(duration_millis(lease.ttl)));
        Ok(claimed)
    }

    /// The first `per_partition` pending rows of each of `partitions`, `(seq, key)`; and
    /// whether a pending row without a partition exists (one more index probe in the same
    /// round trip: a row with no `partition_no`).
    async fn first_pending(&self, partitions: &[i32], per_partition: usize) -> Result<(Vec<(i64, String)>, bool)> {
        let per = i64::try_from(per_partition).unwrap_or(i64::MAX);
        let mut found = Vec::new();
        let mut unpartitioned = false;
        let probe = format!(
            "SELECT seq, msg_key, partition_no FROM (SELECT seq, msg_key, partition_no FROM {} \
             WHERE partition_no IS NULL AND status = 0 ORDER BY seq LIMIT 1) unpartitioned",
            self.table
        );
        let statements: Vec<Query> = match self.dialect {
            #[cfg(feature = "postgres")]
            Dialect::Postgres => {
                let mut q = Query::new(self.dialect);
                q.push("SELECT x.seq, x.msg_key, x.partition_no FROM unnest(")
                    .bind(partitions.to_vec())
                    .push("::int[]) AS o(p) CROSS JOIN LATERAL (SELECT w.seq, w.msg_key, w.partition_no FROM ")
                    .push(&self.table)
                    .push(" w WHERE w.partition_no = o.p AND w.status = 0 ORDER BY w.seq LIMIT ")
                    .bind(per)
                    .push(") x UNION ALL ")
                    .push(&probe);
                vec![q]
            }
            _ => partitions
                .chunks(PARTITIONS_PER_STATEMENT)
                .enumerate()
                .map(|(n, chunk)| {
                    let mut q = Query::new(self.dialect);
                    if n == 0 {
                        q.push(&probe);
                    }
                    for (i, p) in chunk.iter().enumerate() {
                        if i > 0 || n == 0 {
                            q.push(" UNION ALL ");
                        }
                        q.push("SELECT seq, msg_key, partition_no FROM (SELECT seq, msg_key, partition_no FROM ")
                            .push(&self.table)
                            .push(" WHERE partition_no = ")
                            .bind(*p)
                            .push(" AND status = 0 ORDER BY seq LIMIT ")
                            .bind(per)
                            .push(") p")
                            .push(&i.to_string());
                    }
                    q
                })
                .collect(),
        };
        for q in statements {
            for row in self.fetch(&self.db, q).await? {
                let seq = row.try_get_by_index::<i64>(0).map_err(|e| self.db_err(e))?;
                if row.try_get_by_index::<Option<i32>>(2).map_err(|e| self.db_err(e))?.is_none() {
                    unpartitioned = true;
                    continue;
                }
                // A keyed row always has a key; a row without one here is skipped, not claimed.
                if let Ok(key) = row.try_get_by_index::<String>(1) {
                    found.push((seq, key));
                }
            }
        }
        Ok((found, unpartitioned))
    }
}

/// The first row of each key among `candidates`, oldest first.
fn heads(mut candidates: Vec<(i64, String)>) -> Vec<(i64, String)> {
    candidates.sort_unstable_by_key(|(seq, _)| *seq);
    let mut seen = HashSet::with_capacity(candidates.len());
    candidates.into_iter().filter(|(_, key)| seen.insert(key.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::heads;

    #[test]
    fn only_the_first_row_of_each_key_is_a_head() {
        let rows = vec![(5, "b".to_owned()), (1, "a".to_owned()), (2, "a".to_owned()), (3, "c".to_owned())];
        let seqs: Vec<i64> = heads(rows).into_iter().map(|(seq, _)| seq).collect();
        assert_eq!(seqs, vec![1, 3, 5]);
    }
}
