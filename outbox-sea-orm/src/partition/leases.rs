//! The partition leases: renewing a store's hold, rebalancing it to a fair share, and
//! handing it over when the last relay on the store stops.

use outbox_core::message::now_millis;
use outbox_core::{Error, Result};
use sea_orm::TransactionTrait;
use tokio::sync::MutexGuard;

use super::{Ownership, View, fair_share};
use crate::SqlStore;
use crate::migration::{partition_count_error, partitions_made_for};
use crate::sql::{Dialect, Query};

/// Lease rows written per `INSERT` when seeding (SQLite caps compound statements).
const SEED_ROWS_PER_INSERT: usize = 400;

impl SqlStore {
    /// The partitions this store holds now, renewing its hold first when that is due.
    /// Empty without partitioning, or when the hold cannot be renewed (the database is
    /// down): keyed messages then wait, while the SQL check on every claim keeps them safe.
    pub(crate) async fn held_partitions(&self) -> Vec<i32> {
        match self.renewed_view().await {
            Some(view) if now_millis() < view.valid_until => view.owned.clone(),
            _ => Vec::new(),
        }
    }

    /// Renews the hold when that is due (claims by id check it in SQL, so they need no list).
    pub(crate) async fn renew_hold_if_due(&self) {
        drop(self.renewed_view().await);
    }

    /// The store's view of its hold, renewed first when due; `None` without partitioning.
    async fn renewed_view(&self) -> Option<MutexGuard<'_, View>> {
        let own = self.ownership.as_ref()?;
        let mut view = own.view.lock().await;
        let now = now_millis();
        if now >= view.renew_at
            && let Err(error) = self.renew_hold(own, &mut view, now).await
        {
            tracing::warn!(%error, "could not renew the partition leases; keyed messages wait");
            view.renew_at = now.saturating_add((own.ttl_millis() / 10).max(100));
        }
        Some(view)
    }

    /// Renews the hold, then takes or gives up partitions to reach the fair share.
    async fn renew_hold(&self, own: &Ownership, view: &mut View, now: i64) -> Result<()> {
        let ttl = own.ttl_millis();
        let until = now.saturating_add(ttl);
        if !view.seeded {
            self.seed_partitions(own).await?;
            view.seeded = true;
        }
        self.execute(&self.db, self.upsert_relay(own, until)).await?;
        let mut q = Query::new(self.dialect);
        q.push("DELETE FROM ").push(&own.relays_table).push(" WHERE alive_until < ").bind(now.saturating_sub(ttl));
        self.execute(&self.db, q).await?;
        let (live, older) = self.live_relays(own, now).await?;
        let target = fair_share(own.partitions, live, older);

        let mut q = Query::new(self.dialect);
        q.push("UPDATE ")
            .push(&own.leases_table)
            .push(" SET lease_until = ")
            .bind(until)
            .push(" WHERE owner = ")
            .bind(own.owner)
            .push(" AND lease_until > ")
            .bind(now);
        self.execute(&self.db, q).await?;
        let mut owned = self.owned_partitions(own, now).await?;
        if owned.len() > target {
            let extra = owned.split_off(target);
            let mut q = Query::new(self.dialect);
            q.push("UPDATE ")
                .push(&own.leases_table)
                .push(" SET owner = NULL, lease_until = 0 WHERE owner = ")
                .bind(own.owner)
                .push(" AND ")
                .i32_in("partition_no", extra.iter().copied());
            self.execute(&self.db, q).await?;
            tracing::info!(released = extra.len(), held = owned.len(), relays = live, "partitions handed over");
        } else if owned.len() < target {
            let before = owned.len();
            self.execute(&self.db, self.acquire(own, target - owned.len(), now, until)).await?;
            owned = self.owned_partitions(own, now).await?;
            if owned.len() > before {
                tracing::info!(taken = owned.len() - before, held = owned.len(), relays = live, "partitions taken");
            }
        }
        let short = owned.len() < target;
        view.owned = owned;
        view.valid_until = until.saturating_sub(ttl / 5);
        // Short of its share, a relay looks again soon: others are handing partitions over.
        view.renew_at = now.saturating_add(if short { (ttl / 20).clamp(100, 500) } else { ttl / 3 });
        Ok(())
    }

    /// Creates the lease row of every partition that has none (the migration creates the
    /// table; the rows follow the store's partition count), all in one transaction, so that a
    /// table's lease rows always show the count they were made for. A table made for another
    /// count is refused: its keyed messages wait until the counts agree (the migration
    /// explains what to do).
    async fn seed_partitions(&self, own: &Ownership) -> Result<()> {
        let made_for =
            partitions_made_for(&self.db, self.dialect, &own.leases_table).await.map_err(|e| self.db_err(e))?;
        match made_for {
            Some(n) if n == i64::from(own.partitions) => return Ok(()),
            Some(n) => {
                let reason = partition_count_error(&self.config.table, own.partitions, n);
                return Err(Error::config("store.key_partitions", reason));
            }
            None => {}
        }
        let txn = self.db.begin().await.map_err(|e| self.db_err(e))?;
        let all: Vec<u16> = (0..own.partitions).collect();
        for chunk in all.chunks(SEED_ROWS_PER_INSERT) {
            let values: Vec<String> = chunk.iter().map(|p| format!("({p}, 0, 0)")).collect();
            let (head, tail) = match self.dialect {
                Dialect::Postgres => ("INSERT INTO ", " ON CONFLICT (partition_no) DO NOTHING"),
                Dialect::MySql => ("INSERT IGNORE INTO ", ""),
                Dialect::Sqlite => ("INSERT OR IGNORE INTO ", ""),
            };
            let mut q = Query::new(self.dialect);
            q.push(head)
                .push(&own.leases_table)
                .push(" (partition_no, epoch, lease_until) VALUES ")
                .push(&values.join(", "))
                .push(tail);
            self.execute(&txn, q).await?;
        }
        txn.commit().await.map_err(|e| self.db_err(e))
    }

    fn upsert_relay(&self, own: &Ownership, until: i64) -> Query {
        let mut q = Query::new(self.dialect);
        q.push("INSERT INTO ")
            .push(&own.relays_table)
            .push(" (owner, alive_until) VALUES (")
            .bind(own.owner)
            .push(", ")
            .bind(until)
            .push(match self.dialect {
                Dialect::Postgres => ") ON CONFLICT (owner) DO UPDATE SET alive_until = EXCLUDED.alive_until",
                Dialect::MySql => ") ON DUPLICATE KEY UPDATE alive_until = VALUES(alive_until)",
                Dialect::Sqlite => ") ON CONFLICT (owner) DO UPDATE SET alive_until = excluded.alive_until",
            });
        q
    }

    /// Live relays, and how many of them are older (a smaller owner id) than this one.
    async fn live_relays(&self, own: &Ownership, now: i64) -> Result<(usize, usize)> {
        let mut q = Query::new(self.dialect);
        q.push("SELECT COUNT(*), COUNT(CASE WHEN owner < ")
            .bind(own.owner)
            .push(" THEN 1 END) FROM ")
            .push(&own.relays_table)
            .push(" WHERE alive_until > ")
            .bind(now);
        let rows = self.fetch(&self.db, q).await?;
        let count = |i| {
            rows.first().and_then(|r| r.try_get_by_index::<i64>(i).ok()).map_or(0, |n| usize::try_from(n).unwrap_or(0))
        };
        Ok((count(0).max(1), count(1)))
    }

    async fn owned_partitions(&self, own: &Ownership, now: i64) -> Result<Vec<i32>> {
        let mut q = Query::new(self.dialect);
        q.push("SELECT partition_no FROM ")
            .push(&own.leases_table)
            .push(" WHERE owner = ")
            .bind(own.owner)
            .push(" AND lease_until > ")
            .bind(now)
            .push(" AND partition_no < ")
            .bind(i32::from(own.partitions))
            .push(" ORDER BY partition_no");
        self.fetch(&self.db, q)
            .await?
            .iter()
            .map(|r| r.try_get_by_index::<i32>(0).map_err(|e| self.db_err(e)))
            .collect()
    }

    /// Takes up to `count` free or expired partitions, lowest first; each taken partition's
    /// epoch goes up by one.
    fn acquire(&self, own: &Ownership, count: usize, now: i64, until: i64) -> Query {
        let limit = i64::try_from(count).unwrap_or(i64::MAX);
        let mut q = Query::new(self.dialect);
        q.push("UPDATE ")
            .push(&own.leases_table)
            .push(" SET owner = ")
            .bind(own.owner)
            .push(", epoch = epoch + 1, lease_until = ")
            .bind(until)
            .push(" WHERE (owner IS NULL OR lease_until <= ")
            .bind(now)
            .push(")");
        match self.dialect {
            // MySQL: no LIMIT in IN-subqueries, but UPDATE takes ORDER BY … LIMIT.
            Dialect::MySql => {
                q.push(" AND partition_no < ")
                    .bind(i32::from(own.partitions))
                    .push(" ORDER BY partition_no LIMIT ")
                    .bind(limit);
            }
            Dialect::Postgres | Dialect::Sqlite => {
                q.push(" AND partition_no IN (SELECT partition_no FROM ")
                    .push(&own.leases_table)
                    .push(" WHERE (owner IS NULL OR lease_until <= ")
                    .bind(now)
                    .push(") AND partition_no < ")
                    .bind(i32::from(own.partitions))
                    .push(" ORDER BY partition_no LIMIT ")
                    .bind(limit);
                if self.dialect == Dialect::Postgres {
                    q.push(" FOR UPDATE SKIP LOCKED");
                }
                q.push(")");
            }
        }
        q
    }

    /// Gives up every partition and the relay's registration, so the other relays take the
    /// partitions at their next renewal instead of after the lease TTL.
    pub(crate) async fn release_partitions(&self) -> Result<()> {
        let Some(own) = &self.ownership else { return Ok(()) };
        let mut view = own.view.lock().await;
        let mut q = Query::new(self.dialect);
        q.push("UPDATE ")
            .push(&own.leases_table)
            .push(" SET owner = NULL, lease_until = 0 WHERE owner = ")
            .bind(own.owner);
        let released = self.execute(&self.db, q).await?;
        let mut q = Query::new(self.dialect);
        q.push("DELETE FROM ").push(&own.relays_table).push(" WHERE owner = ").bind(own.owner);
        self.execute(&self.db, q).await?;
        view.owned.clear();
        view.valid_until = 0;
        view.renew_at = 0;
        if released > 0 {
            tracing::info!(released, "partitions handed over on shutdown");
        }
        Ok(())
    }
}
