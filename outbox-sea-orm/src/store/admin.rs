//! [`OutboxAdmin`] for [`SqlStore`]: key backlog, dead letters, replay and purges.

use std::time::Duration;

use async_trait::async_trait;
use outbox_core::message::{duration_millis, now_millis};
use outbox_core::{DeadLetter, DeadLetterQuery, OutboxAdmin, ReplaySelector, Result};
use sea_orm::DbErr;

use super::{SqlStore, limit_value};
use crate::schema::MESSAGE_COLUMNS;
use crate::sql::{Dialect, Query};

#[async_trait]
impl OutboxAdmin for SqlStore {
    async fn key_backlog(&self, limit: usize) -> Result<Vec<(String, u64)>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut q = Query::new(self.dialect);
        q.push("SELECT msg_key, COUNT(*) AS n FROM ")
            .push(&self.table)
            .push(" WHERE status = 0 AND msg_key IS NOT NULL GROUP BY msg_key ORDER BY n DESC, msg_key LIMIT ")
            .bind(limit_value(limit));
        self.fetch(&self.db, q)
            .await?
            .iter()
            .map(|r| {
                let key: String = r.try_get("", "msg_key")?;
                let n: i64 = r.try_get("", "n")?;
                Ok((key, u64::try_from(n).unwrap_or(0)))
            })
            .collect::<std::result::Result<_, DbErr>>()
            .map_err(|e| self.db_err(e))
    }

    async fn dead_letters(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let mut q = Query::new(self.dialect);
        q.push("SELECT ").push(MESSAGE_COLUMNS).push(" FROM ").push(&self.table).push(" WHERE status = 2");
        if !query.ids.is_empty() {
            q.push(" AND ").uuid_in("id", query.ids.iter().map(|id| id.as_uuid()));
        }
        if let Some(topic) = &query.topic {
            q.push(" AND topic = ").bind(topic.clone());
        }
        q.push(" ORDER BY seq LIMIT ").bind(limit_value(query.limit));
        self.fetch(&self.db, q)
            .await?
            .iter()
            .map(|r| {
                let row = self.listed(self.decode(r))?;
                Ok(DeadLetter { dead_at: row.finished_at.unwrap_or(0), message: row.message })
            })
            .collect()
    }

    async fn replay(&self, selector: &ReplaySelector) -> Result<u64> {
        if matches!(selector, ReplaySelector::Ids(ids) if ids.is_empty()) {
            return Ok(0);
        }
        let mut q = Query::new(self.dialect);
        q.push("UPDATE ")
            .push(&self.table)
            .push(" SET status = 0, attempts = 0, available_at = ")
            .bind(now_millis())
            .push(", claimed_until = NULL, claim_token = NULL, finished_at = NULL WHERE status = 2");
        match selector {
            ReplaySelector::Ids(ids) => {
                q.push(" AND ").uuid_in("id", ids.iter().map(|id| id.as_uuid()));
            }
            ReplaySelector::Topic(topic) => {
                q.push(" AND topic = ").bind(topic.clone());
            }
            ReplaySelector::All => {}
        }
        self.execute(&self.db, q).await
    }

    async fn purge_dead(&self, older_than: Duration) -> Result<u64> {
        let cutoff = now_millis().saturating_sub(duration_millis(older_than));
        let mut q = Query::new(self.dialect);
        q.push("DELETE FROM ").push(&self.table).push(" WHERE status = 2 AND finished_at <= ").bind(cutoff);
        self.execute(&self.db, q).await
    }

    async fn purge_published(&self, older_than: Duration, limit: usize) -> Result<u64> {
        if limit == 0 {
            return Ok(0);
        }
        let cutoff = now_millis().saturating_sub(duration_millis(older_than));
        let mut q = Query::new(self.dialect);
        q.push("DELETE FROM ").push(&self.table);
        if self.dialect == Dialect::MySql {
            // MySQL has no LIMIT in IN-subqueries, but DELETE takes ORDER BY … LIMIT.
            q.push(" WHERE status = 1 AND finished_at <= ").bind(cutoff);
        } else {
            q.push(" WHERE seq IN (SELECT seq FROM ")
                .push(&self.table)
                .push(" WHERE status = 1 AND finished_at <= ")
                .bind(cutoff);
        }
        q.push(" ORDER BY seq LIMIT ").bind(limit_value(limit));
        if self.dialect != Dialect::MySql {
            q.push(")");
        }
        self.execute(&self.db, q).await
    }
}
