//! The inbox on every backend: duplicates skipped, concurrent deliveries of one id have one
//! effect, a failed handler records nothing, retention deletes old ids in batches.
//! (Concurrent creation of one inbox table: `migrate_race.rs`.)

mod common;

use std::sync::Arc;
use std::time::Duration;

use outbox_core::consumer::HandlerError;
use outbox_sea_orm::inbox::{Inbox, InboxConfig, InboxError, InboxFuture, Processed, migrate_inbox};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbErr, Statement};

use common::{Backend, connect, unique_table};

/// An inbox on a fresh table plus a business table `effects` that handlers insert into.
struct Fixture {
    inbox: Inbox,
    effects: String,
}

async fn fixture(backend: Backend) -> Option<Fixture> {
    let db = connect(backend).await?;
    let table = unique_table();
    let config = InboxConfig::default().table(table.clone()).consumer("tests");
    migrate_inbox(&db, &config).await.expect("migrate inbox");
    let effects = format!("{table}_fx");
    db.execute_unprepared(&format!("CREATE TABLE {effects} (message_id VARCHAR(255) NOT NULL)")).await.unwrap();
    Some(Fixture { inbox: Inbox::new(db, config).unwrap(), effects })
}

impl Fixture {
    /// A handler that records one effect of `id`, in the inbox's transaction.
    fn effect(
        &self,
        id: &str,
    ) -> impl for<'c> FnOnce(&'c DatabaseTransaction) -> InboxFuture<'c, (), DbErr> + Send + use<> {
        let sql = format!("INSERT INTO {} (message_id) VALUES ('{id}')", self.effects);
        move |txn| Box::pin(async move { txn.execute_unprepared(&sql).await.map(|_| ()) })
    }

    async fn effects_of(&self, id: &str) -> i64 {
        let db = self.inbox.db();
        let sql = format!("SELECT COUNT(*) AS n FROM {} WHERE message_id = '{id}'", self.effects);
        let row = db.query_one_raw(Statement::from_string(db.get_database_backend(), sql)).await.unwrap().unwrap();
        row.try_get::<i64>("", "n").unwrap()
    }

    async fn age_by_an_hour(&self, id: &str) {
        let db = self.inbox.db();
        let t = &self.inbox.config().table;
        let sql = format!("UPDATE {t} SET processed_at = processed_at - 3600000 WHERE message_id = '{id}'");
        db.execute_unprepared(&sql).await.unwrap();
    }
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

async fn duplicate_is_skipped(fx: Fixture) {
    let id = new_id();
    assert_eq!(fx.inbox.process(&id, fx.effect(&id)).await.unwrap(), Processed::Done(()));
    assert_eq!(fx.inbox.process(&id, fx.effect(&id)).await.unwrap(), Processed::Duplicate);
    assert_eq!(fx.effects_of(&id).await, 1);
    assert!(fx.inbox.contains(&id).await.unwrap());

    // Another consumer on the same table processes the same id once too.
    let other = Inbox::new(fx.inbox.db().clone(), fx.inbox.config().clone().consumer("other")).unwrap();
    assert_eq!(other.process(&id, fx.effect(&id)).await.unwrap(), Processed::Done(()));
    assert_eq!(fx.effects_of(&id).await, 2);
}

async fn concurrent_deliveries_have_one_effect(fx: Fixture) {
    let fx = Arc::new(fx);
    for _ in 0..5 {
        let id = new_id();
        let racers = (0..4).map(|_| {
            let (fx, id) = (fx.clone(), id.clone());
            tokio::spawn(async move {
                let sql = format!("INSERT INTO {} (message_id) VALUES ('{id}')", fx.effects);
                fx.inbox
                    .process(&id, move |txn| {
                        Box::pin(async move {
                            txn.execute_unprepared(&sql).await?;
                            // Hold the transaction open so the other deliveries arrive meanwhile.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Ok::<_, DbErr>(())
                        })
                    })
                    .await
                    .unwrap()
            })
        });
        let outcomes = futures::future::join_all(racers).await;
        let done = outcomes.iter().filter(|o| matches!(o.as_ref().unwrap(), Processed::Done(()))).count();
        assert_eq!(done, 1, "{outcomes:?}");
        assert_eq!(fx.effects_of(&id).await, 1);
    }
}

#[derive(Debug, thiserror::Error)]
#[error("payment service refused")]
struct Refused;

async fn failed_handler_records_nothing_and_a_retry_runs(fx: Fixture) {
    let id = new_id();
    let sql = format!("INSERT INTO {} (message_id) VALUES ('{id}')", fx.effects);
    let err = fx
        .inbox
        .process(&id, move |txn| {
            Box::pin(async move {
                txn.execute_unprepared(&sql).await.unwrap();
                Err::<(), _>(Refused)
            })
        })
        .await
        .unwrap_err();
    assert!(matches!(err, InboxError::Handler(Refused)), "{err:?}");
    assert!(!fx.inbox.contains(&id).await.unwrap());
    assert_eq!(fx.effects_of(&id).await, 0, "the handler's insert rolled back");

    assert_eq!(fx.inbox.process(&id, fx.effect(&id)).await.unwrap(), Processed::Done(()));
    assert_eq!(fx.effects_of(&id).await, 1);
}

/// A handler that rejects a message (no retry will fix it) keeps that verdict through `?` in
/// a consumer handler: the message is dead-lettered, not redelivered until attempts run out.
async fn a_handler_s_rejection_stays_a_rejection(fx: Fixture) {
    let id = new_id();
    let verdict = |result: Result<Processed<()>, InboxError<HandlerError>>| -> HandlerError {
        HandlerError::from(result.unwrap_err())
    };
    let rejected = fx
        .inbox
        .process(&id, |_| Box::pin(async { Err::<(), _>(HandlerError::reject("amount is not a number")) }))
        .await;
    let err = verdict(rejected);
    assert!(!err.is_retryable(), "{err:?}");
    assert_eq!(err.to_string(), "amount is not a number");
    let retried =
        fx.inbox.process(&id, |_| Box::pin(async { Err::<(), _>(HandlerError::retry("lock timeout")) })).await;
    assert!(verdict(retried).is_retryable());
    // Any other error of the handler is retryable: the transaction rolled back.
    let other = fx.inbox.process(&id, |_| Box::pin(async { Err::<(), _>(Refused) })).await;
    let err = HandlerError::from(other.unwrap_err());
    assert!(err.is_retryable(), "{err:?}");
    assert!(!fx.inbox.contains(&id).await.unwrap());
}

async fn retention_purges_old_ids_in_batches(fx: Fixture) {
    let ids: Vec<String> = (0..4).map(|_| new_id()).collect();
    for id in &ids {
        assert_eq!(fx.inbox.process(id, fx.effect(id)).await.unwrap(), Processed::Done(()));
    }
    for id in &ids[..3] {
        fx.age_by_an_hour(id).await;
    }
    let window = Duration::from_secs(1800);
    assert_eq!(fx.inbox.purge(window, 2).await.unwrap(), 2);
    assert_eq!(fx.inbox.purge_all(window, 2).await.unwrap(), 1);
    assert_eq!(fx.inbox.purge(window, 2).await.unwrap(), 0);
    for id in &ids[..3] {
        assert!(!fx.inbox.contains(id).await.unwrap());
    }
    assert!(fx.inbox.contains(&ids[3]).await.unwrap(), "a recent id is kept");
    // A purged id is processed again: the window must outlast redeliveries.
    assert_eq!(fx.inbox.process(&ids[0], fx.effect(&ids[0])).await.unwrap(), Processed::Done(()));
}

per_backend!(
    fixture =>
    duplicate_is_skipped,
    concurrent_deliveries_have_one_effect,
    failed_handler_records_nothing_and_a_retry_runs,
    a_handler_s_rejection_stays_a_rejection,
    retention_purges_old_ids_in_batches,
);
