//! Retention: old inbox ids removed in bounded batches.

use std::time::Duration;

use outbox_core::Result;
use sea_orm::{ConnectionTrait, Statement, Value};

use super::Inbox;
use super::store::now_millis;
use crate::sql::Dialect;

impl Inbox {
    /// Deletes at most `limit` of this consumer's ids recorded more than `older_than` ago,
    /// oldest first, and returns how many it deleted. Call it until it returns less than
    /// `limit` (or use [`purge_all`](Self::purge_all)); small batches keep each delete short.
    ///
    /// Keep ids longer than any redelivery can arrive (the broker's retention of unacked
    /// messages, the outbox's longest retry): a message whose id was purged runs again.
    pub async fn purge(&self, older_than: Duration, limit: u64) -> Result<u64> {
        let age = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_millis().saturating_sub(age);
        let consumer = self.config().consumer.clone();
        let t = self.quoted_table();
        let (sql, values): (String, Vec<Value>) = match self.dialect() {
            Dialect::MySql => (
                format!("DELETE FROM {t} WHERE consumer = ? AND processed_at < ? ORDER BY processed_at LIMIT {limit}"),
                vec![consumer.into(), cutoff.into()],
            ),
            Dialect::Postgres => (
                format!(
                    "DELETE FROM {t} WHERE consumer = $1 AND message_id IN \
                     (SELECT message_id FROM {t} WHERE consumer = $1 AND processed_at < $2 ORDER BY processed_at LIMIT {limit})"
                ),
                vec![consumer.into(), cutoff.into()],
            ),
            Dialect::Sqlite => (
                format!(
                    "DELETE FROM {t} WHERE consumer = ? AND message_id IN \
                     (SELECT message_id FROM {t} WHERE consumer = ? AND processed_at < ? ORDER BY processed_at LIMIT {limit})"
                ),
                vec![consumer.clone().into(), consumer.into(), cutoff.into()],
            ),
        };
        let stmt = Statement::from_sql_and_values(self.dialect().backend(), sql, values);
        self.db().execute_raw(stmt).await.map(|r| r.rows_affected()).map_err(|e| self.db_err(e))
    }

    /// [`purge`](Self::purge) in batches of `batch` until a batch comes back short; returns
    /// the total deleted.
    pub async fn purge_all(&self, older_than: Duration, batch: u64) -> Result<u64> {
        let mut total = 0;
        loop {
            let deleted = self.purge(older_than, batch.max(1)).await?;
            total += deleted;
            if deleted < batch.max(1) {
                return Ok(total);
            }
        }
    }
}
