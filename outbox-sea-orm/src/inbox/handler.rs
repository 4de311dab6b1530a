//! [`InboxHandler`]: a consumer [`Handler`] whose deliveries share inbox transactions.
//!
//! One transaction per message costs `BEGIN`, the inbox insert, the work and `COMMIT`: four
//! round trips and a commit where a plain handler has one. Deliveries that wait while the
//! handler's transactions are busy are taken together instead: one `BEGIN`, one insert of
//! all their ids, each one's work, one `COMMIT`. Under load the groups grow by themselves;
//! with one delivery at a time each is its own transaction, as with [`Inbox::process`].

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use outbox_core::Result;
use outbox_core::consumer::{Delivery, Handler, HandlerError, HandlerResult, Processed};
use sea_orm::{ConnectionTrait, DatabaseTransaction, Statement, Value};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::config::MAX_INBOX_ID_LEN;
use super::store::{Inbox, InboxFuture, now_millis};
use crate::sql::Dialect;

/// The work of one delivery, type-erased: any `Fn(&DatabaseTransaction, &Delivery)`
/// closure returning an [`InboxFuture`].
trait InboxWork: Send + Sync + 'static {
    fn run<'c>(&'c self, txn: &'c DatabaseTransaction, delivery: &'c Delivery) -> InboxFuture<'c, (), HandlerError>;
}

impl<F> InboxWork for F
where
    F: for<'c> Fn(&'c DatabaseTransaction, &'c Delivery) -> InboxFuture<'c, (), HandlerError> + Send + Sync + 'static,
{
    fn run<'c>(&'c self, txn: &'c DatabaseTransaction, delivery: &'c Delivery) -> InboxFuture<'c, (), HandlerError> {
        self(txn, delivery)
    }
}

type Job = (Delivery, oneshot::Sender<HandlerResult>);

/// A consumer [`Handler`] that runs its work exactly once per message id: the id and the
/// work's effects commit together, a recorded id is [`Processed::Duplicate`] and the work
/// does not run. Deliveries that arrive while its transactions are busy share one
/// transaction, up to [`InboxConfig::batch`](super::InboxConfig::batch) of them, with at
/// most [`InboxConfig::transactions`](super::InboxConfig::transactions) open at once.
/// Build it with [`Inbox::handler`].
///
/// Each delivery's answer comes after its transaction committed, so the runner acknowledges
/// it only then. A delivery whose work fails rolls its group back; the others then run again
/// one transaction each, so one bad message costs its group a retry, never an effect.
/// Two deliveries of one id in two groups (two consumers) cannot both run: the second insert
/// waits on the first transaction and becomes a duplicate when it commits. Ids are inserted
/// in sorted order, so two groups never wait on each other in a circle.
///
/// The grouping runs in a task spawned on the runtime of the first delivery; it ends when
/// the handler is dropped.
pub struct InboxHandler {
    inbox: Inbox,
    work: Arc<dyn InboxWork>,
    queue: OnceLock<mpsc::UnboundedSender<Job>>,
}

impl fmt::Debug for InboxHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboxHandler").field("inbox", &self.inbox).finish_non_exhaustive()
    }
}

impl Inbox {
    /// A consumer [`Handler`] that runs `work` for each delivery in an inbox transaction,
    /// deliveries that arrive together sharing one: see [`InboxHandler`].
    ///
    /// `work` may run more than once for one delivery, always in a transaction that then
    /// rolls back: when another delivery of its group fails, the group rolls back and each
    /// delivery runs again in a transaction of its own. Its database effects happen once;
    /// effects elsewhere (an HTTP call) do not belong in it. Its [`HandlerError::reject`]
    /// dead-letters the message, [`HandlerError::retry`] redelivers it.
    ///
    /// ```no_run
    /// # async fn run(inbox: outbox_sea_orm::inbox::Inbox) {
    /// use outbox_core::consumer::HandlerError;
    /// use sea_orm::ConnectionTrait;
    ///
    /// let handler = inbox.handler(|txn, d| {
    ///     let sql = format!("INSERT INTO shipments (message_id) VALUES ('{}')", d.id);
    ///     Box::pin(async move {
    ///         txn.execute_unprepared(&sql).await.map_err(HandlerError::retry_from)?;
    ///         Ok(())
    ///     })
    /// });
    /// // Give `handler` to a consumer runner, e.g. outbox-nats' `JetStreamConsumer::spawn`.
    /// # let _ = handler;
    /// # }
    /// ```
    pub fn handler<W>(&self, work: W) -> InboxHandler
    where
        W: for<'c> Fn(&'c DatabaseTransaction, &'c Delivery) -> InboxFuture<'c, (), HandlerError>
            + Send
            + Sync
            + 'static,
    {
        InboxHandler { inbox: self.clone(), work: Arc::new(work), queue: OnceLock::new() }
    }
}

#[async_trait]
impl Handler for InboxHandler {
    async fn handle(&self, delivery: Delivery) -> HandlerResult {
        // The grouping task starts with the first delivery, on the runner's runtime.
        let queue = self.queue.get_or_init(|| {
            // Unbounded: the runner's `concurrency` bounds the deliveries waiting here.
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(group_and_run(self.inbox.clone(), self.work.clone(), rx));
            tx
        });
        let (answer, answered) = oneshot::channel();
        if queue.send((delivery, answer)).is_err() {
            return Err(HandlerError::retry("the inbox handler stopped"));
        }
        answered.await.unwrap_or_else(|_| Err(HandlerError::retry("the inbox transaction was abandoned (panic)")))
    }
}

/// Takes what is waiting once a transaction is free and runs it as one group. Ends when the
/// handler is dropped.
async fn group_and_run(inbox: Inbox, work: Arc<dyn InboxWork>, mut queue: mpsc::UnboundedReceiver<Job>) {
    let (max, open) = (inbox.config().batch, inbox.config().transactions);
    let free = Arc::new(Semaphore::new(open));
    while let Some(first) = queue.recv().await {
        let Ok(permit) = free.clone().acquire_owned().await else { return };
        let mut group = vec![first];
        while group.len() < max {
            match queue.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let (inbox, work) = (inbox.clone(), work.clone());
        tokio::spawn(async move {
            run_group(&inbox, work.as_ref(), group).await;
            drop(permit);
        });
    }
}

async fn run_group(inbox: &Inbox, work: &dyn InboxWork, group: Vec<Job>) {
    // An id the inbox cannot record fails the same way on every delivery: dead-letter it.
    let (group, bad): (Vec<Job>, Vec<Job>) =
        group.into_iter().partition(|(d, _)| !d.id.is_empty() && d.id.len() <= MAX_INBOX_ID_LEN);
    for (delivery, answer) in bad {
        let _ = answer.send(Err(HandlerError::reject(format!(
            "an inbox message id must be 1 to {MAX_INBOX_ID_LEN} bytes, got {}",
            delivery.id.len()
        ))));
    }
    if group.len() > 1 {
        match together(inbox, work, &group).await {
            Ok(outcomes) => {
                for ((_, answer), outcome) in group.into_iter().zip(outcomes) {
                    let _ = answer.send(Ok(outcome));
                }
                return;
            }
            Err(e) => tracing::debug!(error = %e, messages = group.len(), "inbox group rolled back; one by one"),
        }
    }
    for job in group {
        let outcome = together(inbox, work, std::slice::from_ref(&job)).await;
        let _ = job.1.send(outcome.map(|mut one| one.pop().unwrap_or(Processed::Duplicate)));
    }
}

/// The group in one transaction: every id inserted, the work of the new ones, one commit;
/// an outcome per job. Any failure rolls it all back and is the work's error, or a retryable
/// one for the database's.
async fn together(
    inbox: &Inbox,
    work: &dyn InboxWork,
    group: &[Job],
) -> std::result::Result<Vec<Processed<()>>, HandlerError> {
    let txn = inbox.begin().await.map_err(|e| HandlerError::retry_from(inbox.db_err(e)))?;
    let fresh = record_all(inbox, &txn, group.iter().map(|(d, _)| d.id.as_str())).await;
    let fresh = fresh.map_err(HandlerError::retry_from)?;
    // A second delivery of one id within the group is its duplicate.
    let mut ran = HashSet::with_capacity(group.len());
    let mut outcomes = Vec::with_capacity(group.len());
    for (delivery, _) in group {
        if fresh.contains(delivery.id.as_str()) && ran.insert(delivery.id.as_str()) {
            if let Err(e) = work.run(&txn, delivery).await {
                // A failed rollback leaves nothing recorded either: the connection is dropped.
                let _ = txn.rollback().await;
                return Err(e);
            }
            outcomes.push(Processed::Done(()));
        } else {
            outcomes.push(Processed::Duplicate);
        }
    }
    // A failed COMMIT may still have committed: then the retry finds the ids recorded.
    txn.commit().await.map_err(|e| HandlerError::retry_from(inbox.db_err(e)))?;
    Ok(outcomes)
}

/// Inserts `ids` into the inbox in `txn`, in sorted order; the ones that were new.
async fn record_all<'a>(
    inbox: &Inbox,
    txn: &DatabaseTransaction,
    ids: impl Iterator<Item = &'a str>,
) -> Result<HashSet<String>> {
    let mut ids: Vec<&str> = ids.collect();
    ids.sort_unstable();
    ids.dedup();
    if inbox.dialect() == Dialect::MySql {
        // No `RETURNING` on MySQL.
        let mut fresh = HashSet::new();
        for id in ids {
            if inbox.record(txn, id).await? {
                fresh.insert(id.to_owned());
            }
        }
        return Ok(fresh);
    }
    let (consumer, now) = (inbox.config().consumer.clone(), now_millis());
    let mut sql = format!("INSERT INTO {} (consumer, message_id, processed_at) VALUES ", inbox.quoted_table());
    let mut values: Vec<Value> = Vec::with_capacity(ids.len() * 3);
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        match inbox.dialect() {
            Dialect::Postgres => sql.push_str(&format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3)),
            _ => sql.push_str("(?, ?, ?)"),
        }
        values.extend([consumer.clone().into(), (*id).into(), now.into()]);
    }
    sql.push_str(" ON CONFLICT DO NOTHING RETURNING message_id");
    let stmt = Statement::from_sql_and_values(inbox.dialect().backend(), sql, values);
    let rows = txn.query_all_raw(stmt).await.map_err(|e| inbox.db_err(e))?;
    rows.iter().map(|row| row.try_get_by_index::<String>(0).map_err(|e| inbox.db_err(e))).collect()
}
