//! Write transactions: [`OutboxTransaction`] (begin, write, enqueue, commit, then notify) and
//! its closure form, [`SqlStore::transaction`].

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;

use outbox_core::{MessageId, NewMessage, OutboxEvent};
use sea_orm::DatabaseTransaction;

use crate::SqlStore;
use crate::error::WriteError;

/// A write transaction of a [`SqlStore`], begun by [`SqlStore::begin`], in the style of
/// sqlx's `Transaction`.
///
/// It derefs to SeaORM's [`DatabaseTransaction`], so your rows go in with the usual calls
/// (`active_model.insert(&*tx)`, `Entity::find().one(&*tx)`, `tx.execute_unprepared(…)`).
/// [`enqueue`](Self::enqueue) buffers an event; [`commit`](Self::commit) inserts the buffered
/// messages in one multi-row `INSERT` ([`SqlStore::enqueue_in`]), commits, and then calls
/// the store's notifier. Dropped without `commit` (an early `?`, a panic), it rolls back:
/// nothing is written and nobody is notified.
///
/// ```
/// # #[cfg(feature = "sqlite")] {
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use outbox_core::{NewMessage, OutboxStore};
/// use outbox_sea_orm::{SqlStore, SqlStoreConfig, WriteError, connect_sqlite, migrate};
/// use sea_orm::ConnectionTrait;
///
/// # let path = std::env::temp_dir().join(format!("outbox-tx-doc-{}.db", uuid::Uuid::now_v7()));
/// let db = connect_sqlite(&path).await?;
/// migrate(&db, &SqlStoreConfig::default()).await?;
/// db.execute_unprepared("CREATE TABLE orders (id INTEGER PRIMARY KEY)").await?;
/// let store = SqlStore::new(db, SqlStoreConfig::default())?;
///
/// let mut tx = store.begin().await?;
/// tx.execute_unprepared("INSERT INTO orders (id) VALUES (7)").await?;
/// tx.enqueue_message(NewMessage::new("orders.placed", r#"{"id":7}"#).key("7"))?;
/// tx.commit().await?;
///
/// // Dropped without commit: neither the order nor its message is written.
/// let mut tx = store.begin().await?;
/// tx.execute_unprepared("INSERT INTO orders (id) VALUES (8)").await?;
/// tx.enqueue_message(NewMessage::new("orders.placed", r#"{"id":8}"#).key("8"))?;
/// drop(tx);
///
/// assert_eq!(store.stats().await?.pending, 1);
/// # drop(store);
/// # let _ = std::fs::remove_file(&path);
/// # Ok::<(), WriteError>(())
/// # }).unwrap();
/// # }
/// ```
#[must_use = "a transaction that is dropped rolls back; call `commit`"]
pub struct OutboxTransaction<'s> {
    store: &'s SqlStore,
    txn: DatabaseTransaction,
    messages: Vec<NewMessage>,
}

/// The future a [`SqlStore::transaction`] closure returns: its result plus the messages to
/// enqueue in the same transaction.
pub type TransactionFuture<'c, T, E> = Pin<Box<dyn Future<Output = Result<(T, Vec<NewMessage>), E>> + Send + 'c>>;

impl SqlStore {
    /// Begins a write transaction: your rows go in through it (it derefs to
    /// [`DatabaseTransaction`]), your events through [`OutboxTransaction::enqueue`], and
    /// [`OutboxTransaction::commit`] writes both at once, then notifies. On SQLite it begins
    /// with `BEGIN IMMEDIATE`, so it never fails half-way on a lock upgrade.
    pub async fn begin(&self) -> Result<OutboxTransaction<'_>, WriteError> {
        Ok(OutboxTransaction { store: self, txn: self.begin_write_raw().await?, messages: Vec::new() })
    }

    /// [`begin`](Self::begin) as a closure: runs `work` in a new transaction, enqueues the
    /// messages it returns, commits, and only then calls the store's notifier. When `work`
    /// or the enqueue fails, the transaction is rolled back and nobody is notified.
    ///
    /// The closure has the shape of SeaORM's [`TransactionTrait::transaction`](sea_orm::TransactionTrait::transaction):
    /// it gets the transaction and returns a boxed future. Its error type `E` must accept
    /// [`WriteError`] (`E: From<WriteError>`): [`WriteError`] itself, `outbox_core::Error`,
    /// `anyhow::Error` or your application error.
    ///
    /// ```no_run
    /// # async fn run(store: outbox_sea_orm::SqlStore) -> Result<(), outbox_sea_orm::WriteError> {
    /// use outbox_core::NewMessage;
    /// use outbox_sea_orm::WriteError;
    /// use sea_orm::ConnectionTrait;
    ///
    /// let order_id = store
    ///     .transaction(|txn| {
    ///         Box::pin(async move {
    ///             txn.execute_unprepared("INSERT INTO orders (id) VALUES (42)").await?;
    ///             let event = NewMessage::json("orders.placed", &serde_json::json!({ "id": 42 }))?.key("42");
    ///             Ok::<_, WriteError>((42, vec![event]))
    ///         })
    ///     })
    ///     .await?;
    /// # let _ = order_id; Ok(()) }
    /// ```
    pub async fn transaction<T, E, F>(&self, work: F) -> Result<T, E>
    where
        F: for<'c> FnOnce(&'c DatabaseTransaction) -> TransactionFuture<'c, T, E> + Send,
        T: Send,
        E: From<WriteError> + Send,
    {
        let mut tx = self.begin().await?;
        match work(&tx.txn).await {
            Ok((value, messages)) => {
                tx.messages = messages;
                tx.commit().await?;
                Ok(value)
            }
            Err(e) => {
                self.rollback(tx.txn).await;
                Err(e)
            }
        }
    }

    /// Rolls `txn` back; a failure is only logged, since the connection drops the
    /// transaction anyway.
    async fn rollback(&self, txn: DatabaseTransaction) {
        if let Err(e) = txn.rollback().await {
            tracing::warn!(error = %e, "outbox: rollback failed; the connection drops the transaction");
        }
    }
}

impl OutboxTransaction<'_> {
    /// Buffers the message of `event` ([`NewMessage::from_event`]: its topic, key and JSON
    /// payload) and returns its id. Nothing is sent before [`commit`](Self::commit).
    ///
    /// Fails, leaving the transaction usable, when the event does not encode or its message
    /// is invalid ([`NewMessage::validate`]).
    pub fn enqueue<E: OutboxEvent>(&mut self, event: &E) -> Result<MessageId, WriteError> {
        self.enqueue_message(NewMessage::from_event(event)?)
    }

    /// Buffers `message` and returns its id, for a message built by hand (raw payload, extra
    /// headers, an id of your own). Fails, leaving the transaction usable, when the message is
    /// invalid ([`NewMessage::validate`]).
    pub fn enqueue_message(&mut self, message: NewMessage) -> Result<MessageId, WriteError> {
        message.validate()?;
        let id = message.id;
        self.messages.push(message);
        Ok(id)
    }

    /// Inserts the buffered messages (one multi-row `INSERT`), commits, and then calls the
    /// store's notifier with their ids. When the insert or the commit fails, the transaction
    /// is rolled back and nobody is notified.
    pub async fn commit(self) -> Result<(), WriteError> {
        let Self { store, txn, messages } = self;
        let ids = match store.enqueue_in(&txn, messages).await {
            Ok(ids) => ids,
            Err(e) => {
                store.rollback(txn).await;
                return Err(WriteError::from_enqueue(e));
            }
        };
        txn.commit().await?;
        store.notify_committed(&ids).await;
        Ok(())
    }

    /// Rolls back: your rows and the buffered messages are discarded, nobody is notified.
    /// Dropping the transaction does the same, without waiting for the `ROLLBACK`.
    pub async fn rollback(self) -> Result<(), WriteError> {
        Ok(self.txn.rollback().await?)
    }
}

impl Deref for OutboxTransaction<'_> {
    type Target = DatabaseTransaction;

    fn deref(&self) -> &DatabaseTransaction {
        &self.txn
    }
}

impl fmt::Debug for OutboxTransaction<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxTransaction")
            .field("backend", &self.store.backend())
            .field("table", &self.store.config().table)
            .field("messages", &self.messages.len())
            .finish_non_exhaustive()
    }
}
