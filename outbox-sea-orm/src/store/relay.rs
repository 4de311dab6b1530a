//! [`OutboxStore`] for [`SqlStore`]: what the relay's engines call.

use std::time::Duration;

use async_trait::async_trait;
#[cfg(feature = "postgres")]
use outbox_core::Retention;
use outbox_core::message::{duration_millis, now_millis};
use outbox_core::{Failure, Lease, MessageId, NewMessage, OutboxMessage, OutboxStats, OutboxStore, Result};
use uuid::Uuid;

use super::pick::Pick;
use super::settle::Rows;
use super::{SqlStore, age_since};
#[cfg(feature = "postgres")]
use crate::held::Prepared;
use crate::sql::Query;
#[cfg(feature = "postgres")]
use crate::sql::Tid;

/// Ids per statement when they go into an `IN (…)` list (SQLite allows 32,766 binds).
const MAX_IDS_PER_STATEMENT: usize = 4_000;

#[async_trait]
impl OutboxStore for SqlStore {
    /// Auto-commit enqueue: one statement (a transaction when MySQL/SQLite need several
    /// statements for a very large batch), then the store's notifier, if any.
    async fn enqueue(&self, messages: Vec<NewMessage>) -> Result<Vec<MessageId>> {
        let ids = if self.fits_one_insert(messages.len()) {
            self.enqueue_in(&self.db, messages).await?
        } else {
            let txn = self.begin_write().await?;
            let ids = self.enqueue_in(&txn, messages).await?;
            txn.commit().await.map_err(|e| self.db_err(e))?;
            ids
        };
        self.notify_committed(&ids).await;
        Ok(ids)
    }

    async fn claim_ids(&self, ids: &[MessageId], lease: &Lease) -> Result<Vec<OutboxMessage>> {
        // The claim checks the hold on partitions in SQL.
        self.renew_hold_if_due().await;
        let mut claimed = Vec::new();
        for chunk in ids.chunks(MAX_IDS_PER_STATEMENT) {
            claimed.extend(self.claim(Pick::Ids(chunk), lease).await?);
        }
        if let Some(own) = &self.ownership {
            own.claimed(&claimed, now_millis().saturating_add(duration_millis(lease.ttl)));
        }
        Ok(claimed)
    }

    /// Rows locked by a held claim carry no lease, so they count as retryable: the listener
    /// then retries them a bounded number of times.
    async fn retryable_among(&self, ids: &[MessageId]) -> Result<Vec<MessageId>> {
        let now = now_millis();
        let mut retryable = Vec::new();
        for chunk in ids.chunks(MAX_IDS_PER_STATEMENT) {
            let mut q = Query::new(self.dialect);
            q.push("SELECT c.id FROM ")
                .push(&self.table)
                .push(" c WHERE c.status = 0 AND (c.claimed_until IS NULL OR c.claimed_until <= ")
                .bind(now)
                .push(") AND ")
                .uuid_in("c.id", chunk.iter().map(|id| id.0));
            // Rows of partitions another relay holds are that relay's to publish.
            self.push_held_partition(&mut q, now);
            for row in self.fetch(&self.db, q).await? {
                retryable.push(MessageId(row.try_get_by_index::<Uuid>(0).map_err(|e| self.db_err(e))?));
            }
        }
        Ok(retryable)
    }

    async fn claim_due(&self, limit: usize, min_age: Duration, lease: &Lease) -> Result<Vec<OutboxMessage>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let created_before = now_millis().saturating_sub(duration_millis(min_age));
        self.sweep(created_before, limit, lease).await
    }

    async fn complete(&self, ids: &[MessageId], lease: &Lease) -> Result<u64> {
        let done = self.complete_claimed(ids, lease).await;
        self.forget_in_flight(ids.iter().copied());
        done
    }

    async fn release(&self, ids: &[MessageId], lease: &Lease) -> Result<()> {
        self.release_claimed(ids, lease).await
    }

    async fn fail(&self, failures: &[Failure], lease: &Lease) -> Result<()> {
        let failed = self.fail_claimed(failures, lease).await;
        self.forget_in_flight(failures.iter().map(|f| f.id));
        failed
    }

    async fn stats(&self) -> Result<OutboxStats> {
        let now = now_millis();
        let mut q = Query::new(self.dialect);
        q.push("SELECT COUNT(CASE WHEN status = 0 THEN 1 END) AS pending, ")
            .push("COUNT(CASE WHEN status = 0 AND claimed_until > ")
            .bind(now)
            .push(" THEN 1 END) AS claimed, COUNT(CASE WHEN status = 2 THEN 1 END) AS dead, ")
            .push("MIN(CASE WHEN status = 0 THEN created_at END) AS oldest FROM ")
            .push(&self.table)
            .push(" WHERE status IN (0, 2)");
        let rows = self.fetch(&self.db, q).await?;
        let Some(row) = rows.first() else { return Ok(OutboxStats::default()) };
        let count =
            |col: &str| row.try_get::<i64>("", col).map(|n| u64::try_from(n).unwrap_or(0)).map_err(|e| self.db_err(e));
        let oldest: Option<i64> = row.try_get("", "oldest").map_err(|e| self.db_err(e))?;
        #[cfg(feature = "postgres")]
        let held = self.held.as_ref().map_or(0, |h| h.open_rows());
        #[cfg(not(feature = "postgres"))]
        let held = 0;
        Ok(OutboxStats {
            pending: count("pending")?,
            claimed: count("claimed")? + held,
            dead: count("dead")?,
            oldest_pending_age: oldest.map(|c| age_since(now, c)),
        })
    }

    fn relay_started(&self) {
        if let Some(own) = &self.ownership {
            own.relay_started();
        }
    }

    /// Hands the store's partitions over when its last relay stops.
    async fn relay_stopped(&self) {
        if let Some(own) = &self.ownership
            && own.relay_stopped()
            && let Err(error) = self.release_partitions().await
        {
            tracing::warn!(%error, "could not hand the partitions over; they move when their leases expire");
        }
    }
}

impl SqlStore {
    /// Gives back claimed rows untouched ([`OutboxStore::release`]): out of a held claim
    /// without a statement, under a lease with one.
    pub(crate) async fn release_claimed(&self, ids: &[MessageId], lease: &Lease) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let released = self.release_rows(ids, lease).await;
        self.forget_in_flight(ids.iter().copied());
        released
    }

    async fn release_rows(&self, ids: &[MessageId], lease: &Lease) -> Result<()> {
        #[cfg(feature = "postgres")]
        let rest = match &self.held {
            Some(held) => self.release_held(held, lease, ids).await,
            None => ids.to_vec(),
        };
        #[cfg(not(feature = "postgres"))]
        let rest = ids;
        let now = now_millis();
        for chunk in rest.chunks(MAX_IDS_PER_STATEMENT) {
            self.execute(&self.db, self.release_query(chunk, lease, now)).await?;
        }
        Ok(())
    }

    /// Settled rows leave the keys in flight once their statement is done (the rows of a
    /// held claim stay locked until then): a claim in between would plan rows it cannot take.
    fn forget_in_flight(&self, ids: impl IntoIterator<Item = MessageId>) {
        if let Some(own) = &self.ownership {
            own.settled(ids);
        }
    }

    async fn complete_claimed(&self, ids: &[MessageId], lease: &Lease) -> Result<u64> {
        let now = now_millis();
        let mut done = 0;
        #[cfg(feature = "postgres")]
        let rest = match &self.held {
            Some(held) => {
                let complete = |_: &[MessageId], tids: &[Tid]| self.complete_query(Rows::Tids(tids), None, now);
                // Deleting takes no value but the `ctid`s; keeping published rows takes a time.
                let prepared = match self.config.retention {
                    Retention::Delete => Prepared::ByTids,
                    Retention::KeepPublished => Prepared::No,
                };
                let (settled, rest) = self.settle_held(held, lease, ids, |id| *id, complete, prepared).await;
                done += settled;
                rest
            }
            None => ids.to_vec(),
        };
        #[cfg(not(feature = "postgres"))]
        let rest = ids;
        for chunk in rest.chunks(MAX_IDS_PER_STATEMENT) {
            done += self.execute(&self.db, self.complete_query(Rows::Ids(chunk), Some(lease), now)).await?;
        }
        Ok(done)
    }

    async fn fail_claimed(&self, failures: &[Failure], lease: &Lease) -> Result<()> {
        let now = now_millis();
        #[cfg(feature = "postgres")]
        let rest: Vec<Failure> = match &self.held {
            Some(held) => {
                let fail = |mine: &[Failure], _: &[Tid]| self.fail_query(mine, None, now);
                self.settle_held(held, lease, failures, |f| f.id, fail, Prepared::No).await.1
            }
            None => failures.to_vec(),
        };
        #[cfg(not(feature = "postgres"))]
        let rest = failures;
        for chunk in rest.chunks(MAX_IDS_PER_STATEMENT / 4) {
            self.execute(&self.db, self.fail_query(chunk, Some(lease), now)).await?;
        }
        Ok(())
    }
}
