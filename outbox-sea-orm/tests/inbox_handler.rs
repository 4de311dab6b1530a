//! `Inbox::handler` on every backend: deliveries waiting together share one transaction, a
//! failure rolls its group back and each then runs alone, duplicates (within a group, from
//! before, or from a second consumer racing) have no second effect.

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use outbox_core::consumer::{Delivery, Handler, HandlerError, HandlerResult, Processed};
use outbox_sea_orm::inbox::{Inbox, InboxConfig, InboxHandler, migrate_inbox};
use sea_orm::{ConnectionTrait, Statement};
use tokio::sync::{Notify, watch};

use common::{Backend, connect, unique_table};

/// What the handlers' work saw: calls per id; it rejects `poison`, and the work of `blocker`
/// waits for the gate.
#[derive(Default)]
struct Work {
    calls: Mutex<HashMap<String, u32>>,
    poison: Mutex<Option<String>>,
    blocker: Mutex<Option<String>>,
    started: Notify,
}

struct Fixture {
    inbox: Inbox,
    effects: Arc<String>,
    work: Arc<Work>,
    gate: watch::Sender<bool>,
}

async fn fixture(backend: Backend) -> Option<Fixture> {
    let db = connect(backend).await?;
    let table = unique_table();
    // One transaction at a time, so the deliveries that wait behind it form the next group.
    let config = InboxConfig::default().table(table.clone()).consumer("tests").transactions(1);
    migrate_inbox(&db, &config).await.expect("migrate inbox");
    let effects = format!("{table}_fx");
    db.execute_unprepared(&format!("CREATE TABLE {effects} (message_id VARCHAR(255) NOT NULL)")).await.unwrap();
    let (gate, _) = watch::channel(false);
    Some(Fixture { inbox: Inbox::new(db, config).unwrap(), effects: Arc::new(effects), work: Arc::default(), gate })
}

impl Fixture {
    /// A handler whose work records one effect per delivery.
    fn handler(&self, inbox: &Inbox) -> InboxHandler {
        let (effects, work, gate) = (self.effects.clone(), self.work.clone(), self.gate.subscribe());
        inbox.handler(move |txn, d| {
            let (effects, work, mut gate) = (effects.clone(), work.clone(), gate.clone());
            let sql = format!("INSERT INTO {effects} (message_id) VALUES ('{}')", d.id);
            let id = d.id.clone();
            Box::pin(async move {
                *work.calls.lock().unwrap().entry(id.clone()).or_default() += 1;
                if work.blocker.lock().unwrap().as_deref() == Some(id.as_str()) {
                    work.started.notify_one();
                    gate.wait_for(|open| *open).await.expect("gate");
                }
                txn.execute_unprepared(&sql).await.map_err(HandlerError::retry_from)?;
                if work.poison.lock().unwrap().as_deref() == Some(id.as_str()) {
                    return Err(HandlerError::reject(format!("{id} is poison")));
                }
                Ok(())
            })
        })
    }

    fn calls(&self, id: &str) -> u32 {
        self.work.calls.lock().unwrap().get(id).copied().unwrap_or(0)
    }

    async fn effects_of(&self, id: &str) -> i64 {
        let db = self.inbox.db();
        let sql = format!("SELECT COUNT(*) AS n FROM {} WHERE message_id = '{id}'", self.effects);
        let row = db.query_one_raw(Statement::from_string(db.get_database_backend(), sql)).await.unwrap().unwrap();
        row.try_get::<i64>("", "n").unwrap()
    }

    /// Starts `blocker` alone in the handler's one transaction, then queues `rest` behind it
    /// (each future polled once has handed its delivery over); returns the futures to await
    /// after opening the gate.
    async fn queue_behind_blocker<'h>(
        &self,
        handler: &'h InboxHandler,
        blocker: &str,
        rest: &[String],
    ) -> Vec<Pin<Box<dyn Future<Output = HandlerResult> + Send + 'h>>> {
        *self.work.blocker.lock().unwrap() = Some(blocker.to_owned());
        let started = self.work.started.notified();
        let mut futures = vec![handler.handle(delivery(blocker))];
        assert!(futures::poll!(futures[0].as_mut()).is_pending());
        started.await;
        for id in rest {
            let mut f = handler.handle(delivery(id));
            assert!(futures::poll!(f.as_mut()).is_pending());
            futures.push(f);
        }
        futures
    }
}

fn delivery(id: &str) -> Delivery {
    Delivery::new("orders", id, b"{}".to_vec())
}

fn new_ids(n: usize) -> Vec<String> {
    (0..n).map(|_| uuid::Uuid::now_v7().to_string()).collect()
}

async fn waiting_deliveries_share_one_transaction_and_duplicates_are_skipped(fx: Fixture) {
    let handler = fx.handler(&fx.inbox);
    let earlier = new_ids(2);
    for id in &earlier {
        assert_eq!(handler.handle(delivery(id)).await.unwrap(), Processed::Done(()));
    }
    let fresh = new_ids(15);
    // Behind the blocker: the fresh ids, three of them twice, and the two processed earlier.
    let mut queued: Vec<String> = fresh.clone();
    queued.extend(fresh[..3].iter().cloned());
    queued.extend(earlier.iter().cloned());
    let blocker = new_ids(1).remove(0);
    let futures = fx.queue_behind_blocker(&handler, &blocker, &queued).await;
    fx.gate.send_replace(true);
    let outcomes: Vec<Processed<()>> =
        futures::future::join_all(futures).await.into_iter().map(|o| o.expect("no failure")).collect();

    assert_eq!(outcomes[0], Processed::Done(()), "the blocker");
    let queued_outcomes = &outcomes[1..];
    assert!(queued_outcomes[..15].iter().all(|o| *o == Processed::Done(())), "{queued_outcomes:?}");
    assert!(queued_outcomes[15..].iter().all(|o| *o == Processed::Duplicate), "{queued_outcomes:?}");
    for id in fresh.iter().chain(&earlier).chain([&blocker]) {
        assert_eq!(fx.effects_of(id).await, 1, "{id}");
        assert_eq!(fx.calls(id), 1, "{id}: the work ran once");
        assert!(fx.inbox.contains(id).await.unwrap());
    }
}

async fn a_failure_rolls_its_group_back_and_each_then_runs_alone(fx: Fixture) {
    let handler = fx.handler(&fx.inbox);
    let queued = new_ids(12);
    let poison = queued[7].clone();
    *fx.work.poison.lock().unwrap() = Some(poison.clone());
    let blocker = new_ids(1).remove(0);
    let futures = fx.queue_behind_blocker(&handler, &blocker, &queued).await;
    fx.gate.send_replace(true);
    let outcomes = futures::future::join_all(futures).await;

    let err = outcomes[8].as_ref().expect_err("the poison message fails");
    assert!(!err.is_retryable(), "a rejection stays a rejection: {err}");
    assert!(err.to_string().contains("is poison"), "{err}");
    assert_eq!(fx.effects_of(&poison).await, 0, "its insert rolled back");
    assert!(!fx.inbox.contains(&poison).await.unwrap());
    for (i, (id, outcome)) in queued.iter().zip(&outcomes[1..]).enumerate().filter(|(_, (id, _))| **id != poison) {
        assert_eq!(*outcome.as_ref().unwrap(), Processed::Done(()), "{id}");
        // Those before the poison ran in the group that rolled back, then alone: the group
        // was one transaction. Those after it ran only alone.
        assert_eq!(fx.calls(id), if i < 7 { 2 } else { 1 }, "{id} (#{i})");
        assert_eq!(fx.effects_of(id).await, 1, "{id}: one effect");
        assert!(fx.inbox.contains(id).await.unwrap());
    }
}

async fn two_consumers_racing_on_the_same_ids_have_one_effect_each(fx: Fixture) {
    // Two processes of one consumer, each handed every id, in opposite orders.
    let other = Inbox::new(fx.inbox.db().clone(), fx.inbox.config().clone().transactions(3)).unwrap();
    let (a, b) = (Arc::new(fx.handler(&fx.inbox)), Arc::new(fx.handler(&other)));
    let ids = new_ids(120);
    let race = |handler: Arc<InboxHandler>, ids: Vec<String>| {
        tokio::spawn(async move {
            let calls = ids.into_iter().map(|id| {
                let handler = handler.clone();
                async move {
                    // As a runner does: a retryable failure (a deadlock, say) is delivered again.
                    let mut attempts = 0;
                    loop {
                        attempts += 1;
                        match handler.handle(delivery(&id)).await {
                            Err(e) if e.is_retryable() && attempts < 5 => continue,
                            outcome => return outcome.map(|o| (id, o)),
                        }
                    }
                }
            });
            futures::future::join_all(calls).await
        })
    };
    let reversed: Vec<String> = ids.iter().rev().cloned().collect();
    let (from_a, from_b) = tokio::join!(race(a, ids.clone()), race(b, reversed));
    let mut done: HashMap<String, u32> = HashMap::new();
    for outcome in from_a.unwrap().into_iter().chain(from_b.unwrap()) {
        let (id, processed) = outcome.expect("no failure");
        *done.entry(id).or_default() += u32::from(processed == Processed::Done(()));
    }
    for id in &ids {
        assert_eq!(done.get(id), Some(&1), "{id}: done by exactly one consumer");
        assert_eq!(fx.effects_of(id).await, 1, "{id}");
    }
}

async fn an_id_the_inbox_cannot_record_is_rejected_at_once(fx: Fixture) {
    let handler = fx.handler(&fx.inbox);
    let too_long = "x".repeat(300);
    let err = handler.handle(delivery(&too_long)).await.expect_err("a 300-byte id");
    assert!(!err.is_retryable(), "no redelivery records it: {err}");
    assert!(err.to_string().contains("1 to 255 bytes, got 300"), "{err}");
    assert_eq!(fx.calls(&too_long), 0, "the work did not run");
    let fine = new_ids(1).remove(0);
    assert_eq!(handler.handle(delivery(&fine)).await.unwrap(), Processed::Done(()));
}

per_backend!(
    fixture =>
    waiting_deliveries_share_one_transaction_and_duplicates_are_skipped,
    a_failure_rolls_its_group_back_and_each_then_runs_alone,
    two_consumers_racing_on_the_same_ids_have_one_effect_each,
    an_id_the_inbox_cannot_record_is_rejected_at_once,
);
