//! The write side: enqueue inside the caller's transaction, in one multi-row `INSERT`.

use std::collections::HashSet;

use outbox_core::message::now_millis;
use outbox_core::{Error, MessageId, NewMessage, Result};
use sea_orm::{
    ConnectionTrait, DatabaseTransaction, DbErr, SqlErr, SqliteTransactionMode, TransactionOptions, TransactionTrait,
};

use crate::SqlStore;
use crate::sql::{Dialect, Query};

/// Rows per `INSERT` on MySQL and SQLite (8 binds each; SQLite allows 32,766 binds).
const ROWS_PER_INSERT: usize = 1_000;

impl SqlStore {
    /// Writes `messages` through `conn`, usually your open [`DatabaseTransaction`], so they
    /// commit or roll back with your business rows. Returns their ids in input order.
    ///
    /// Every message is validated first ([`NewMessage::validate`]: topic 1–255 bytes, key up to
    /// 255 bytes, no id twice); an invalid one is reported as [`Error::InvalidMessage`] before
    /// anything is sent, so your transaction stays usable. All messages go in one multi-row
    /// `INSERT` (on MySQL and SQLite, batches over 1,000 messages take one statement per 1,000).
    /// On Postgres with a [`notify_channel`](crate::SqlStoreConfig::notify_channel), the same
    /// statement also runs `pg_notify(channel, '')`, which Postgres delivers on commit only
    /// (once per transaction).
    ///
    /// The store's notifier is **not** called here: call
    /// [`SqlStore::notify_committed`] after your commit (without it the fallback sweep still
    /// publishes them, after `fallback.min_age`), or use
    /// [`SqlStore::begin`] or [`SqlStore::transaction`], which do.
    ///
    /// ```no_run
    /// # async fn run(store: outbox_sea_orm::SqlStore) -> Result<(), Box<dyn std::error::Error>> {
    /// use outbox_core::NewMessage;
    /// use sea_orm::TransactionTrait;
    ///
    /// let txn = store.connection().begin().await?;
    /// // … your INSERTs and UPDATEs on `txn` …
    /// let ids = store.enqueue_in(&txn, vec![NewMessage::new("orders.placed", "{}")]).await?;
    /// txn.commit().await?;
    /// store.notify_committed(&ids).await;
    /// # Ok(()) }
    /// ```
    pub async fn enqueue_in<C: ConnectionTrait>(&self, conn: &C, messages: Vec<NewMessage>) -> Result<Vec<MessageId>> {
        validate_batch(&messages)?;
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        if conn.get_database_backend() != self.dialect.backend() {
            return Err(Error::config(
                "store.connection",
                format!(
                    "enqueue_in got a {:?} connection but the store is on {}",
                    conn.get_database_backend(),
                    self.backend()
                ),
            ));
        }
        let ids: Vec<MessageId> = messages.iter().map(|m| m.id).collect();
        let now = now_millis();
        #[cfg(feature = "postgres")]
        if self.dialect == Dialect::Postgres {
            self.insert_postgres(conn, messages, now).await?;
            return Ok(ids);
        }
        let mut messages = messages.into_iter().peekable();
        while messages.peek().is_some() {
            let chunk: Vec<NewMessage> = messages.by_ref().take(ROWS_PER_INSERT).collect();
            self.insert_rows(conn, chunk, now).await?;
        }
        Ok(ids)
    }

    /// Begins a transaction that will write; on SQLite it takes the write lock up front.
    pub(crate) async fn begin_write(&self) -> Result<DatabaseTransaction> {
        self.begin_write_raw().await.map_err(|e| self.db_err(e))
    }

    /// [`begin_write`](Self::begin_write), keeping the [`DbErr`].
    pub(crate) async fn begin_write_raw(&self) -> std::result::Result<DatabaseTransaction, DbErr> {
        match self.dialect {
            Dialect::Sqlite => {
                let options = TransactionOptions {
                    sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                    ..TransactionOptions::default()
                };
                self.db.begin_with_options(options).await
            }
            Dialect::Postgres | Dialect::MySql => self.db.begin().await,
        }
    }

    pub(crate) fn fits_one_insert(&self, messages: usize) -> bool {
        self.dialect == Dialect::Postgres || messages <= ROWS_PER_INSERT
    }

    fn insert_error(&self, err: DbErr) -> Error {
        if let Some(SqlErr::UniqueConstraintViolation(detail)) = err.sql_err() {
            return Error::permanent(
                self.backend(),
                format!("a message with one of these ids is already stored ({detail})"),
                Some(Box::new(err) as outbox_core::BoxError),
            );
        }
        self.db_err(err)
    }

    /// MySQL / SQLite: `INSERT … VALUES (…), (…)`.
    async fn insert_rows<C: ConnectionTrait>(&self, conn: &C, messages: Vec<NewMessage>, now: i64) -> Result<()> {
        let mut q = Query::new(self.dialect);
        self.push_insert_values(&mut q, messages, now)?;
        conn.execute_raw(q.build()).await.map(|_| ()).map_err(|e| self.insert_error(e))
    }

    /// `INSERT … VALUES (…), …`, one row per message.
    fn push_insert_values(&self, q: &mut Query, messages: Vec<NewMessage>, now: i64) -> Result<()> {
        q.push("INSERT INTO ").push(&self.table).push(
            " (id, topic, msg_key, partition_no, payload, headers, status, attempts, created_at, available_at) VALUES ",
        );
        for (i, m) in messages.into_iter().enumerate() {
            let headers = headers_json(&m)?;
            let partition = self.partition_of(m.key.as_deref());
            if i > 0 {
                q.push(", ");
            }
            q.push("(")
                .bind(m.id.as_uuid())
                .push(", ")
                .bind(m.topic)
                .push(", ")
                .bind(m.key)
                .push(", ")
                .bind(partition)
                .push(", ")
                .bind(m.payload)
                .push(", ")
                .bind(headers)
                .push(", 0, 0, ")
                .bind(now)
                .push(", ")
                .bind(now)
                .push(")");
        }
        Ok(())
    }

    /// Postgres: one message is `INSERT … VALUES`, cheaper to plan and run than `unnest`
    /// (about 5 % of a small business transaction); several are `INSERT … SELECT FROM
    /// unnest(arrays)`, one SQL text for every batch size (its prepared statement is reused).
    /// The optional `pg_notify` rides in the same statement.
    #[cfg(feature = "postgres")]
    async fn insert_postgres<C: ConnectionTrait>(&self, conn: &C, messages: Vec<NewMessage>, now: i64) -> Result<()> {
        let mut q = Query::new(self.dialect);
        if self.config.notify_channel.is_some() {
            q.push("WITH ins AS (");
        }
        match <[NewMessage; 1]>::try_from(messages) {
            Ok(one) => self.push_insert_values(&mut q, one.into(), now)?,
            Err(many) => self.push_insert_unnest(&mut q, many, now)?,
        }
        if let Some(channel) = &self.config.notify_channel {
            q.push(" RETURNING 1) SELECT pg_notify(").bind(channel.clone()).push(", '')");
        }
        conn.execute_raw(q.build()).await.map(|_| ()).map_err(|e| self.insert_error(e))
    }

    /// `INSERT … SELECT FROM unnest(arrays) WITH ORDINALITY`, in the messages' order.
    #[cfg(feature = "postgres")]
    fn push_insert_unnest(&self, q: &mut Query, messages: Vec<NewMessage>, now: i64) -> Result<()> {
        use sea_orm::Value;
        use sea_orm::sea_query::ArrayType;

        let n = messages.len();
        let mut partitions = Vec::with_capacity(n);
        let (mut ids, mut topics, mut keys, mut has_key, mut payloads, mut headers) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for m in messages {
            headers.push(headers_json(&m)?);
            // -1: no partition (arrays bind without NULL elements).
            partitions.push(self.partition_of(m.key.as_deref()).unwrap_or(-1));
            ids.push(m.id.as_uuid());
            topics.push(m.topic);
            // Arrays bind without NULL elements, so a flag says whether the key is set.
            has_key.push(m.key.is_some());
            keys.push(m.key.unwrap_or_default());
            payloads.push(Value::Bytes(Some(m.payload)));
        }
        q.push("INSERT INTO ")
            .push(&self.table)
            .push(" (id, topic, msg_key, partition_no, payload, headers, status, attempts, created_at, available_at) ")
            .push("SELECT u.id, u.topic, CASE WHEN u.has_key THEN u.msg_key END, NULLIF(u.part, -1), u.payload, ")
            .push("u.headers, 0, 0, ")
            .bind(now)
            .push(", ")
            .bind(now)
            .push(" FROM unnest(")
            .bind(ids)
            .push("::uuid[], ")
            .bind(topics)
            .push("::text[], ")
            .bind(keys)
            .push("::text[], ")
            .bind(has_key)
            .push("::boolean[], ")
            .bind(partitions)
            .push("::int[], ")
            .bind(Value::Array(ArrayType::Bytes, Some(Box::new(payloads))))
            .push("::bytea[], ")
            .bind(headers)
            .push("::text[]) WITH ORDINALITY AS u(id, topic, msg_key, has_key, part, payload, headers, ord) ORDER BY u.ord");
        Ok(())
    }
}

impl SqlStore {
    /// The partition a message's row records: its key's, with partitioning on.
    fn partition_of(&self, key: Option<&str>) -> Option<i32> {
        match (key, self.config.key_partitions) {
            (Some(key), partitions) if partitions > 0 => Some(crate::partition::partition_of(key, partitions)),
            _ => None,
        }
    }
}

fn validate_batch(messages: &[NewMessage]) -> Result<()> {
    let mut seen = HashSet::with_capacity(messages.len());
    for m in messages {
        m.validate()?;
        if !seen.insert(m.id) {
            return Err(Error::invalid_message(m.id, "the same id appears twice in one enqueue"));
        }
    }
    Ok(())
}

fn headers_json(m: &NewMessage) -> Result<String> {
    serde_json::to_string(&m.headers)
        .map_err(|e| Error::encode(format!("headers of message {}: {e}", m.id), Some(e.into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_catches_long_topics_and_repeated_ids() {
        let long = NewMessage::new("t".repeat(256), "x");
        assert!(matches!(validate_batch(&[long]), Err(Error::InvalidMessage { .. })));
        let m = NewMessage::new("t", "x");
        let err = validate_batch(&[m.clone(), m]).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
    }
}
