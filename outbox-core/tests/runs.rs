//! A claim that returns runs of a key (its head and the messages right after it): the relay
//! publishes them one message per key at a time and releases what follows a failure. The
//! store here claims every pending message at once, as a partitioned SQL store may.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use outbox_core::message::now_millis;
use outbox_core::testkit::eventually;
use outbox_core::{
    Bus, Disposition, Failure, FallbackConfig, Lease, MessageId, NewMessage, OutboxMessage, OutboxStats, OutboxStore,
    PublishOutcome, Relay, Result,
};

const WAIT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Pending,
    Claimed,
    Completed,
    Failed,
    Released,
}

/// Claims every pending message in one `claim_due` and records how each one was settled.
/// Released messages are not offered again, so a test sees each settle once.
#[derive(Debug, Default)]
struct RunStore {
    messages: Mutex<Vec<(OutboxMessage, State)>>,
    failures: Mutex<Vec<Failure>>,
}

impl RunStore {
    fn states(&self) -> HashMap<String, State> {
        let messages = self.messages.lock().unwrap();
        messages.iter().map(|(m, s)| (String::from_utf8(m.payload.clone()).unwrap(), *s)).collect()
    }

    fn set(&self, ids: &[MessageId], state: State) -> u64 {
        let mut messages = self.messages.lock().unwrap();
        let mut n = 0;
        for (m, s) in messages.iter_mut().filter(|(m, _)| ids.contains(&m.id)) {
            assert_eq!(*s, State::Claimed, "{} settled twice", String::from_utf8_lossy(&m.payload));
            *s = state;
            n += 1;
        }
        n
    }
}

#[async_trait]
impl OutboxStore for RunStore {
    async fn enqueue(&self, new: Vec<NewMessage>) -> Result<Vec<MessageId>> {
        let ids = new.iter().map(|m| m.id).collect();
        let mut messages = self.messages.lock().unwrap();
        messages.extend(new.into_iter().map(|m| (OutboxMessage::from_new(m, now_millis()), State::Pending)));
        Ok(ids)
    }
    async fn claim_ids(&self, _: &[MessageId], _: &Lease) -> Result<Vec<OutboxMessage>> {
        Ok(Vec::new())
    }
    async fn claim_due(&self, limit: usize, _: Duration, _: &Lease) -> Result<Vec<OutboxMessage>> {
        let mut messages = self.messages.lock().unwrap();
        let pending = messages.iter_mut().filter(|(_, s)| *s == State::Pending).take(limit);
        Ok(pending
            .map(|(m, s)| {
                *s = State::Claimed;
                m.clone()
            })
            .collect())
    }
    async fn complete(&self, ids: &[MessageId], _: &Lease) -> Result<u64> {
        Ok(self.set(ids, State::Completed))
    }
    async fn fail(&self, failures: &[Failure], _: &Lease) -> Result<()> {
        let ids: Vec<MessageId> = failures.iter().map(|f| f.id).collect();
        self.set(&ids, State::Failed);
        self.failures.lock().unwrap().extend_from_slice(failures);
        Ok(())
    }
    async fn release(&self, ids: &[MessageId], _: &Lease) -> Result<()> {
        self.set(ids, State::Released);
        Ok(())
    }
    async fn stats(&self) -> Result<OutboxStats> {
        Ok(OutboxStats::default())
    }
}

/// Records each `publish` call's payloads; fails the payloads it is told to.
#[derive(Debug, Default)]
struct WaveBus {
    calls: Mutex<Vec<Vec<String>>>,
    fail: Vec<&'static str>,
}

#[async_trait]
impl Bus for WaveBus {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<PublishOutcome> {
        let payloads: Vec<String> = batch.iter().map(|m| String::from_utf8(m.payload.clone()).unwrap()).collect();
        let outcomes = payloads
            .iter()
            .map(|p| match self.fail.contains(&p.as_str()) {
                true => PublishOutcome::Permanent(format!("{p} rejected")),
                false => PublishOutcome::Published,
            })
            .collect();
        self.calls.lock().unwrap().push(payloads);
        outcomes
    }
}

/// a1 b1 a2 c a3 (c without a key), claimed at once.
async fn run_of_a(store: &RunStore) {
    let m = |body: &str, key: Option<&str>| {
        let m = NewMessage::new("t", body.to_owned());
        match key {
            Some(k) => m.key(k),
            None => m,
        }
    };
    let batch = vec![m("a1", Some("a")), m("b1", Some("b")), m("a2", Some("a")), m("c", None), m("a3", Some("a"))];
    store.enqueue(batch).await.unwrap();
}

async fn relay_until_settled(store: Arc<RunStore>, bus: Arc<WaveBus>) -> HashMap<String, State> {
    let fallback = FallbackConfig::default().interval(Duration::from_millis(20)).min_age(Duration::ZERO);
    let relay = Relay::builder(store.clone(), bus).fallback(fallback).build().unwrap().spawn();
    let states = eventually("every message to be settled", WAIT, || {
        let states = store.states();
        async move { states.values().all(|s| !matches!(s, State::Pending | State::Claimed)).then_some(states) }
    })
    .await;
    relay.shutdown().await.unwrap();
    states
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_goes_out_one_message_per_key_at_a_time() {
    let store = Arc::new(RunStore::default());
    run_of_a(&store).await;
    let bus = Arc::new(WaveBus::default());
    let states = relay_until_settled(store, bus.clone()).await;

    assert!(states.values().all(|s| *s == State::Completed), "{states:?}");
    let calls = bus.calls.lock().unwrap().clone();
    assert_eq!(calls, vec![vec!["a1", "b1", "c"], vec!["a2"], vec!["a3"]], "each wave after the one before it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_stops_its_key_and_releases_the_rest_of_its_run() {
    let store = Arc::new(RunStore::default());
    run_of_a(&store).await;
    let bus = Arc::new(WaveBus { fail: vec!["a1"], ..WaveBus::default() });
    let states = relay_until_settled(store.clone(), bus.clone()).await;

    assert_eq!(states["a1"], State::Failed);
    assert_eq!((states["a2"], states["a3"]), (State::Released, State::Released), "not published, given back");
    assert_eq!((states["b1"], states["c"]), (State::Completed, State::Completed), "other keys go on");
    let calls = bus.calls.lock().unwrap().clone();
    assert_eq!(calls, vec![vec!["a1", "b1", "c"]], "nothing of a after its failure");
    let failures = store.failures.lock().unwrap().clone();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].disposition, Disposition::DeadLetter);
    assert_eq!(failures[0].error, "a1 rejected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_mid_run_keeps_what_went_before() {
    let store = Arc::new(RunStore::default());
    run_of_a(&store).await;
    let bus = Arc::new(WaveBus { fail: vec!["a2"], ..WaveBus::default() });
    let states = relay_until_settled(store, bus.clone()).await;

    assert_eq!((states["a1"], states["a2"], states["a3"]), (State::Completed, State::Failed, State::Released));
    let calls = bus.calls.lock().unwrap().clone();
    assert_eq!(calls, vec![vec!["a1", "b1", "c"], vec!["a2"]]);
}
