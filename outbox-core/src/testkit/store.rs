//! Store conformance cases. Each takes a fresh, empty store (relay and admin methods).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::eventually;
use crate::message::{MessageId, NewMessage, now_millis};
use crate::store::{DeadLetterQuery, Disposition, Failure, Lease, OutboxAdmin, OutboxStore, ReplaySelector};
use crate::{Bus, FallbackConfig, MemoryBus, OutboxMessage, PublishOutcome, Relay, RetryPolicy};

const WAIT: Duration = Duration::from_secs(10);
const TTL: Duration = Duration::from_secs(30);

/// Generates one `#[tokio::test]` per store case. `$setup` is an `async fn(Retention) ->
/// Arc<dyn OutboxAdmin>` (or `Option<Arc<dyn OutboxAdmin>>`, where `None` skips the case
/// because its server is unreachable) that returns a fresh, empty store in its own namespace.
#[macro_export]
macro_rules! store_conformance {
    ($setup:path) => {
        $crate::store_conformance!(@delete $setup;
            enqueue_then_claim_ids_returns_every_field,
            claims_are_exclusive_under_concurrent_claimers,
            a_lease_never_claims_a_message_twice,
            expired_claims_are_taken_over,
            complete_and_fail_need_the_lease,
            claim_due_respects_limit_and_min_age,
            per_key_order_only_the_head_is_claimable,
            backoff_is_honoured,
            dead_letter_blocks_its_key_until_replayed,
            replay_by_topic_and_all,
            purge_dead_letters,
            delete_retention_removes_published,
            counts_and_oldest_pending_age,
            racing_relays_publish_each_message_once_in_key_order,
            reserved_header_names_are_rejected,
            retryable_among_drops_finished_and_claimed_ids,
            a_publish_outlasting_the_claim_ttl_is_a_failed_attempt,
            a_panicking_bus_dead_letters_only_the_message_it_panics_on
        );
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn keep_published_retention_keeps_rows_until_purged() {
            let Some(store) = $crate::testkit::IntoFixture::into_fixture($setup($crate::Retention::KeepPublished).await)
            else {
                return;
            };
            $crate::testkit::store::keep_published_retention_keeps_rows_until_purged(store).await;
        }
    };
    (@delete $setup:path; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(store) = $crate::testkit::IntoFixture::into_fixture($setup($crate::Retention::Delete).await)
                else {
                    return;
                };
                $crate::testkit::store::$case(store).await;
            }
        )*
    };
}

fn msg(topic: &str, key: Option<&str>, body: &str) -> NewMessage {
    let m = NewMessage::new(topic, body.as_bytes().to_vec());
    match key {
        Some(k) => m.key(k),
        None => m,
    }
}

fn ids_of(msgs: &[crate::OutboxMessage]) -> Vec<MessageId> {
    msgs.iter().map(|m| m.id).collect()
}

async fn claim_one(store: &dyn OutboxStore, lease: &Lease) -> Vec<crate::OutboxMessage> {
    store.claim_due(100, Duration::ZERO, lease).await.expect("claim_due")
}

/// Enqueued fields come back intact from a claim by id, and a second claim gets nothing.
pub async fn enqueue_then_claim_ids_returns_every_field(store: Arc<dyn OutboxAdmin>) {
    let before = now_millis();
    let m = msg("conf.fields", Some("k-1"), "{\"a\":1}").header("h1", "v1").header("traceparent", "00-x");
    let ids = store.enqueue(vec![m.clone(), msg("conf.fields", None, "two")]).await.unwrap();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0], m.id, "enqueue returns the ids in input order");

    let lease = Lease::new(TTL);
    let mut claimed = store.claim_ids(&ids, &lease).await.unwrap();
    claimed.sort_by_key(|c| c.id);
    assert_eq!(claimed.len(), 2);
    let got = claimed.iter().find(|c| c.id == m.id).unwrap();
    assert_eq!(got.topic, "conf.fields");
    assert_eq!(got.key.as_deref(), Some("k-1"));
    assert_eq!(got.payload, b"{\"a\":1}");
    assert_eq!(got.headers, m.headers);
    assert_eq!(got.attempts, 0);
    assert_eq!(got.last_error, None);
    assert!(got.created_at >= before - 1000 && got.created_at <= now_millis() + 1000, "created_at is the enqueue time");
    let other = claimed.iter().find(|c| c.id != m.id).unwrap();
    assert_eq!(other.key, None);

    let again = store.claim_ids(&ids, &Lease::new(TTL)).await.unwrap();
    assert!(again.is_empty(), "claimed messages are not claimable again");
    assert!(claim_one(&*store, &Lease::new(TTL)).await.is_empty());
}

/// Eight concurrent claimers drain 300 messages; each message is claimed exactly once.
pub async fn claims_are_exclusive_under_concurrent_claimers(store: Arc<dyn OutboxAdmin>) {
    let batch: Vec<_> = (0..300).map(|i| msg("conf.race", None, &i.to_string())).collect();
    let ids = store.enqueue(batch).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let lease = Lease::new(TTL);
                let got = store.claim_due(17, Duration::ZERO, &lease).await.expect("claim_due");
                if got.is_empty() {
                    return mine;
                }
                mine.extend(ids_of(&got));
            }
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.unwrap());
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "a message was claimed twice");
    assert_eq!(unique.len(), ids.len(), "every message was claimed");
}

/// Claiming again under the same lease returns only messages it does not hold yet.
pub async fn a_lease_never_claims_a_message_twice(store: Arc<dyn OutboxAdmin>) {
    let ids = store.enqueue((0..4).map(|i| msg("conf.again", None, &i.to_string())).collect()).await.unwrap();
    let lease = Lease::new(TTL);
    assert_eq!(ids_of(&store.claim_ids(&ids[..2], &lease).await.unwrap()), ids[..2].to_vec());
    assert_eq!(ids_of(&store.claim_ids(&ids[..3], &lease).await.unwrap()), vec![ids[2]], "by id");
    assert_eq!(ids_of(&store.claim_due(10, Duration::ZERO, &lease).await.unwrap()), vec![ids[3]], "by sweep");
    assert!(store.claim_due(10, Duration::ZERO, &lease).await.unwrap().is_empty());
    assert_eq!(store.complete(&ids, &lease).await.unwrap(), 4);
}

/// A claim whose lease has expired can be taken over by another claimer.
pub async fn expired_claims_are_taken_over(store: Arc<dyn OutboxAdmin>) {
    let ids = store.enqueue(vec![msg("conf.expiry", Some("k"), "x")]).await.unwrap();
    let short = Lease::new(Duration::from_millis(300));
    assert_eq!(store.claim_ids(&ids, &short).await.unwrap().len(), 1);
    assert!(claim_one(&*store, &Lease::new(TTL)).await.is_empty(), "held while the lease is valid");
    let taker = Lease::new(TTL);
    let taken = eventually("expired claim to be claimable", WAIT, || {
        let store = store.clone();
        async move { Some(store.claim_due(10, Duration::ZERO, &taker).await.unwrap()).filter(|v| !v.is_empty()) }
    })
    .await;
    assert_eq!(ids_of(&taken), ids);
    assert_eq!(store.complete(&ids, &short).await.unwrap(), 0, "the expired lease no longer completes");
    assert_eq!(store.complete(&ids, &taker).await.unwrap(), 1);
    assert_eq!(store.stats().await.unwrap().pending, 0);
}

/// `complete` and `fail` with a lease that does not hold the message change nothing.
pub async fn complete_and_fail_need_the_lease(store: Arc<dyn OutboxAdmin>) {
    let ids = store.enqueue(vec![msg("conf.lease", None, "x")]).await.unwrap();
    let holder = Lease::new(TTL);
    assert_eq!(store.claim_ids(&ids, &holder).await.unwrap().len(), 1);
    let stranger = Lease::new(TTL);
    assert_eq!(store.complete(&ids, &stranger).await.unwrap(), 0);
    let f = Failure { id: ids[0], error: "nope".into(), disposition: Disposition::DeadLetter };
    store.fail(&[f], &stranger).await.unwrap();
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.claimed, stats.dead), (1, 1, 0));
    assert_eq!(store.complete(&ids, &holder).await.unwrap(), 1);
}

/// `claim_due` returns at most `limit`, oldest first, and leaves fresh messages to the listener.
pub async fn claim_due_respects_limit_and_min_age(store: Arc<dyn OutboxAdmin>) {
    let ids = store.enqueue((0..25).map(|i| msg("conf.limit", None, &i.to_string())).collect()).await.unwrap();
    assert!(
        store.claim_due(10, Duration::from_secs(3600), &Lease::new(TTL)).await.unwrap().is_empty(),
        "fresh messages are younger than min_age"
    );
    let first = store.claim_due(10, Duration::ZERO, &Lease::new(TTL)).await.unwrap();
    assert_eq!(first.len(), 10);
    assert_eq!(ids_of(&first), ids[..10], "oldest first");
    let rest = store.claim_due(100, Duration::ZERO, &Lease::new(TTL)).await.unwrap();
    assert_eq!(rest.len(), 15);
}

/// Only the head message of a key is claimable, alone or with the messages right after it
/// (a run); other keys and keyless messages flow, and order survives a retry.
pub async fn per_key_order_only_the_head_is_claimable(store: Arc<dyn OutboxAdmin>) {
    let a: Vec<_> = (1..=3).map(|i| msg("conf.order", Some("a"), &format!("a{i}"))).collect();
    let a_ids: Vec<_> = a.iter().map(|m| m.id).collect();
    let mut batch = a;
    batch.push(msg("conf.order", Some("b"), "b1"));
    batch.push(msg("conf.order", None, "free"));
    store.enqueue(batch).await.unwrap();

    let lease = Lease::new(TTL);
    let got = claim_one(&*store, &lease).await;
    let bodies: HashSet<_> = got.iter().map(|m| String::from_utf8(m.payload.clone()).unwrap()).collect();
    let heads = HashSet::from(["a1".to_owned(), "b1".to_owned(), "free".to_owned()]);
    assert!(bodies.is_superset(&heads), "every head is claimed: {bodies:?}");
    let run = run_of(&got, &a_ids);
    assert!(!run.is_empty() && run[..] == a_ids[..run.len()], "a's claimed messages are a run from its head");
    assert!(store.claim_ids(&a_ids[1..], &Lease::new(TTL)).await.unwrap().is_empty(), "a2 waits for a1");

    // a1 fails and is retried: what follows it is given back, and a2 still waits.
    let f = Failure { id: a_ids[0], error: "flaky".into(), disposition: Disposition::RetryAfter(Duration::ZERO) };
    store.fail(&[f], &lease).await.unwrap();
    store.release(&run[1..], &lease).await.unwrap();
    let others: Vec<_> = ids_of(&got).into_iter().filter(|id| !a_ids.contains(id)).collect();
    store.complete(&others, &lease).await.unwrap();
    let mut order = Vec::new();
    for _ in 0..a_ids.len() {
        let lease = Lease::new(TTL);
        let next = claim_one(&*store, &lease).await;
        if next.is_empty() {
            break;
        }
        if order.is_empty() {
            assert_eq!(next[0].id, a_ids[0], "the retried head comes first");
            assert_eq!(next[0].attempts, 1);
        }
        order.extend(ids_of(&next));
        store.complete(&ids_of(&next), &lease).await.unwrap();
    }
    assert_eq!(order, a_ids, "a in order, each once");
    assert_eq!(store.stats().await.unwrap().pending, 0);
}

/// Those of `key_ids` (one key's messages, in order) that `claimed` holds, in that order.
fn run_of(claimed: &[crate::OutboxMessage], key_ids: &[MessageId]) -> Vec<MessageId> {
    key_ids.iter().filter(|id| claimed.iter().any(|m| m.id == **id)).copied().collect()
}

/// A failed message is not claimable before its retry time, then is, with attempts and error.
pub async fn backoff_is_honoured(store: Arc<dyn OutboxAdmin>) {
    let ids = store.enqueue(vec![msg("conf.backoff", Some("k"), "x")]).await.unwrap();
    let lease = Lease::new(TTL);
    store.claim_ids(&ids, &lease).await.unwrap();
    let f = Failure {
        id: ids[0],
        error: "broker timeout".into(),
        disposition: Disposition::RetryAfter(Duration::from_secs(1)),
    };
    store.fail(&[f], &lease).await.unwrap();
    let failed_at = now_millis();
    assert!(claim_one(&*store, &Lease::new(TTL)).await.is_empty(), "not due before its backoff");
    assert!(store.claim_ids(&ids, &Lease::new(TTL)).await.unwrap().is_empty(), "nor by id");
    let got = eventually("retry to become due", WAIT, || {
        let store = store.clone();
        async move { Some(claim_one(&*store, &Lease::new(TTL)).await).filter(|v| !v.is_empty()) }
    })
    .await;
    assert!(now_millis() - failed_at >= 900, "claimed only after the backoff");
    assert_eq!(got[0].attempts, 1);
    assert_eq!(got[0].last_error.as_deref(), Some("broker timeout"));
}

/// A dead letter is listed with its error, blocks later messages of its key, and replays.
pub async fn dead_letter_blocks_its_key_until_replayed(store: Arc<dyn OutboxAdmin>) {
    let first = msg("conf.dead", Some("k"), "poison");
    let second = msg("conf.dead", Some("k"), "next");
    let other = msg("conf.dead", Some("other"), "other");
    let (first_id, second_id, other_id) = (first.id, second.id, other.id);
    store.enqueue(vec![first, second, other]).await.unwrap();
    let lease = Lease::new(TTL);
    let got = claim_one(&*store, &lease).await;
    let got_ids = ids_of(&got);
    assert!(got_ids.contains(&first_id) && got_ids.contains(&other_id), "the head of k and the head of other");
    let f = Failure { id: first_id, error: "payload too large".into(), disposition: Disposition::DeadLetter };
    store.fail(&[f], &lease).await.unwrap();
    // The rest of k's run, if the claim took one, goes back untouched.
    store.release(&run_of(&got, &[second_id]), &lease).await.unwrap();
    assert_eq!(store.complete(&[other_id], &lease).await.unwrap(), 1);

    let stats = store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead), (1, 1));
    let dead = store.dead_letters(&DeadLetterQuery::default()).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.id, first_id);
    assert_eq!(dead[0].message.attempts, 1);
    assert_eq!(dead[0].message.last_error.as_deref(), Some("payload too large"));
    assert!(dead[0].dead_at > 0);
    assert!(claim_one(&*store, &Lease::new(TTL)).await.is_empty(), "k waits behind its dead head");
    assert!(store.claim_ids(&[second_id], &Lease::new(TTL)).await.unwrap().is_empty());

    assert_eq!(store.replay(&ReplaySelector::Ids(vec![second_id])).await.unwrap(), 0, "not dead: untouched");
    assert_eq!(store.replay(&ReplaySelector::Ids(vec![first_id])).await.unwrap(), 1);
    assert_eq!(store.stats().await.unwrap().dead, 0);
    let lease = Lease::new(TTL);
    let replayed = claim_one(&*store, &lease).await;
    let mut order = ids_of(&replayed);
    assert_eq!(order.first(), Some(&first_id), "the replayed head goes first");
    assert_eq!(replayed[0].attempts, 0, "replay resets attempts");
    store.complete(&order, &lease).await.unwrap();
    if order.len() == 1 {
        order.extend(ids_of(&claim_one(&*store, &Lease::new(TTL)).await));
    }
    assert_eq!(order, vec![first_id, second_id], "then the message behind it");
}

/// Replay by topic touches only that topic; replay all touches the rest.
pub async fn replay_by_topic_and_all(store: Arc<dyn OutboxAdmin>) {
    let ids = store
        .enqueue(vec![
            msg("conf.replay.a", None, "1"),
            msg("conf.replay.a", None, "2"),
            msg("conf.replay.b", None, "3"),
        ])
        .await
        .unwrap();
    let lease = Lease::new(TTL);
    assert_eq!(store.claim_ids(&ids, &lease).await.unwrap().len(), 3);
    let fails: Vec<_> =
        ids.iter().map(|id| Failure { id: *id, error: "x".into(), disposition: Disposition::DeadLetter }).collect();
    store.fail(&fails, &lease).await.unwrap();
    let q = DeadLetterQuery { topic: Some("conf.replay.a".into()), ..DeadLetterQuery::default() };
    assert_eq!(store.dead_letters(&q).await.unwrap().len(), 2);
    let q = DeadLetterQuery { ids: vec![ids[2]], ..DeadLetterQuery::default() };
    assert_eq!(store.dead_letters(&q).await.unwrap()[0].message.topic, "conf.replay.b");
    let q = DeadLetterQuery { limit: 1, ..DeadLetterQuery::default() };
    assert_eq!(store.dead_letters(&q).await.unwrap().len(), 1);
    assert_eq!(store.replay(&ReplaySelector::Topic("conf.replay.a".into())).await.unwrap(), 2);
    assert_eq!(store.stats().await.unwrap().dead, 1);
    assert_eq!(store.replay(&ReplaySelector::All).await.unwrap(), 1);
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead), (3, 0));
}

/// `purge_dead` removes dead letters older than the cutoff, and only those.
pub async fn purge_dead_letters(store: Arc<dyn OutboxAdmin>) {
    let ids = store.enqueue(vec![msg("conf.purge", None, "1"), msg("conf.purge", None, "2")]).await.unwrap();
    let lease = Lease::new(TTL);
    store.claim_ids(&ids[..1], &lease).await.unwrap();
    store
        .fail(&[Failure { id: ids[0], error: "x".into(), disposition: Disposition::DeadLetter }], &lease)
        .await
        .unwrap();
    assert_eq!(store.purge_dead(Duration::from_secs(3600)).await.unwrap(), 0, "too young");
    assert_eq!(store.purge_dead(Duration::ZERO).await.unwrap(), 1);
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead), (1, 0), "pending messages are untouched");
}

/// With delete retention, completed messages are gone.
pub async fn delete_retention_removes_published(store: Arc<dyn OutboxAdmin>) {
    let ids = store
        .enqueue(vec![msg("conf.retention", Some("k"), "1"), msg("conf.retention", Some("k"), "2")])
        .await
        .unwrap();
    let lease = Lease::new(TTL);
    assert_eq!(store.claim_ids(&ids, &lease).await.unwrap().len(), 1, "only the head of k");
    assert_eq!(store.complete(&ids[..1], &lease).await.unwrap(), 1);
    assert_eq!(store.purge_published(Duration::ZERO, 100).await.unwrap(), 0, "nothing was kept");
    assert_eq!(store.stats().await.unwrap().pending, 1);
    let lease = Lease::new(TTL);
    assert_eq!(ids_of(&store.claim_ids(&ids, &lease).await.unwrap()), vec![ids[1]]);
}

/// With keep-published retention, completed rows stay (not claimable, not blocking their
/// key) until purged in bounded batches.
pub async fn keep_published_retention_keeps_rows_until_purged(store: Arc<dyn OutboxAdmin>) {
    let ids = store
        .enqueue(vec![msg("conf.keep", Some("k"), "1"), msg("conf.keep", Some("k"), "2"), msg("conf.keep", None, "3")])
        .await
        .unwrap();
    let lease = Lease::new(TTL);
    let got = store.claim_ids(&ids, &lease).await.unwrap();
    assert_eq!(ids_of(&got), vec![ids[0], ids[2]], "the heads");
    assert_eq!(store.complete(&ids_of(&got), &lease).await.unwrap(), 2);
    let lease = Lease::new(TTL);
    assert_eq!(ids_of(&claim_one(&*store, &lease).await), vec![ids[1]], "a published head does not block");
    store.complete(&[ids[1]], &lease).await.unwrap();
    assert!(claim_one(&*store, &Lease::new(TTL)).await.is_empty(), "published rows are not claimable");
    assert_eq!(store.stats().await.unwrap().pending, 0);
    assert_eq!(store.purge_published(Duration::from_secs(3600), 100).await.unwrap(), 0, "too young");
    assert_eq!(store.purge_published(Duration::ZERO, 2).await.unwrap(), 2, "bounded batch");
    assert_eq!(store.purge_published(Duration::ZERO, 2).await.unwrap(), 1);
    assert_eq!(store.purge_published(Duration::ZERO, 2).await.unwrap(), 0);
}

/// Pending, claimed and dead counts, the oldest pending age, and the key backlog.
pub async fn counts_and_oldest_pending_age(store: Arc<dyn OutboxAdmin>) {
    let empty = store.stats().await.unwrap();
    assert_eq!((empty.pending, empty.claimed, empty.dead, empty.oldest_pending_age), (0, 0, 0, None));
    let ids = store
        .enqueue(vec![
            msg("conf.stats", Some("a"), "1"),
            msg("conf.stats", Some("a"), "2"),
            msg("conf.stats", Some("b"), "3"),
            msg("conf.stats", None, "4"),
        ])
        .await
        .unwrap();
    let lease = Lease::new(TTL);
    store.claim_ids(&ids[3..], &lease).await.unwrap();
    let age = eventually("the oldest message to age", WAIT, || {
        let store = store.clone();
        async move { store.stats().await.unwrap().oldest_pending_age.filter(|a| *a >= Duration::from_millis(100)) }
    })
    .await;
    assert!(age < Duration::from_secs(60), "age {age:?} is measured from enqueue");
    let s = store.stats().await.unwrap();
    assert_eq!((s.pending, s.claimed, s.dead), (4, 1, 0));
    assert_eq!(store.key_backlog(10).await.unwrap(), vec![("a".to_owned(), 2), ("b".to_owned(), 1)]);
    assert_eq!(store.key_backlog(1).await.unwrap().len(), 1);
}

/// Two relays with listener and fallback share the store: every message is published
/// exactly once and each key's messages arrive in enqueue order.
pub async fn racing_relays_publish_each_message_once_in_key_order(store: Arc<dyn OutboxAdmin>) {
    const MESSAGES: usize = 2_000;
    const KEYS: usize = 40;
    let bus = Arc::new(MemoryBus::new());
    let relays: Vec<_> = (0..2)
        .map(|_| {
            Relay::builder(store.clone(), bus.clone())
                .fallback(
                    FallbackConfig::default()
                        .interval(Duration::from_millis(20))
                        .min_age(Duration::ZERO)
                        .batch_size(64),
                )
                .build()
                .unwrap()
                .spawn()
        })
        .collect();
    let mut expected: HashMap<String, Vec<MessageId>> = HashMap::new();
    for chunk in (0..MESSAGES).collect::<Vec<_>>().chunks(100) {
        let batch: Vec<_> =
            chunk.iter().map(|i| msg("conf.relays", Some(&format!("key-{}", i % KEYS)), &i.to_string())).collect();
        for m in &batch {
            expected.entry(m.key.clone().unwrap()).or_default().push(m.id);
        }
        store.enqueue(batch).await.unwrap();
    }
    bus.wait_for(MESSAGES, Duration::from_secs(120)).await.expect("all messages published");
    for r in relays {
        r.shutdown().await.unwrap();
    }
    let published = bus.messages();
    assert_eq!(published.len(), MESSAGES, "each message exactly once");
    let mut seen: HashMap<String, Vec<MessageId>> = HashMap::new();
    for m in published {
        seen.entry(m.key.clone().unwrap()).or_default().push(m.id);
    }
    assert_eq!(seen, expected, "per-key order");
}

/// A user header named like one the bus sets is refused at enqueue, in any case.
pub async fn reserved_header_names_are_rejected(store: Arc<dyn OutboxAdmin>) {
    for name in ["Outbox-Message-Id", "outbox-key", "OUTBOX-TOPIC", "Nats-Msg-Id"] {
        let err = store.enqueue(vec![msg("conf.reserved", None, "x").header(name, "forged")]).await.unwrap_err();
        assert!(err.to_string().contains("reserved"), "{name}: {err}");
    }
    assert_eq!(store.stats().await.unwrap().pending, 0, "nothing was written");
    store.enqueue(vec![msg("conf.reserved", None, "x").header("Outbox-Tenant", "t1")]).await.unwrap();
}

/// `retryable_among` keeps unclaimed pending ids and drops published, dead and unknown ones
/// (an id under another live claim may go either way: dropping it is an optimisation).
pub async fn retryable_among_drops_finished_and_claimed_ids(store: Arc<dyn OutboxAdmin>) {
    let ids = store.enqueue((0..4).map(|i| msg("conf.retryable_among", None, &i.to_string())).collect()).await.unwrap();
    let lease = Lease::new(TTL);
    assert_eq!(store.claim_ids(&ids[..3], &lease).await.unwrap().len(), 3);
    store.complete(&ids[..1], &lease).await.unwrap();
    let dead = Failure { id: ids[1], error: "x".into(), disposition: Disposition::DeadLetter };
    store.fail(&[dead], &lease).await.unwrap();
    let unknown = MessageId::new();
    let mut asked = ids.clone();
    asked.push(unknown);
    let mut kept = store.retryable_among(&asked).await.unwrap();
    kept.retain(|id| *id != ids[2]);
    assert_eq!(kept, vec![ids[3]], "the unclaimed pending id only (and maybe the claimed one)");
}

/// Sleeps far past the claim ttl, then fails: without a publish deadline the failure would
/// land after the claim expired, count nothing, and the message would loop for ever.
#[derive(Debug)]
struct StuckBus;

#[async_trait::async_trait]
impl Bus for StuckBus {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<PublishOutcome> {
        tokio::time::sleep(Duration::from_secs(30)).await;
        vec![PublishOutcome::Retryable("late".into()); batch.len()]
    }
}

/// A publish slower than the claim ttl is cut at half the ttl and counted as a failed
/// attempt, so the message backs off and ends dead-lettered after `max_attempts`.
pub async fn a_publish_outlasting_the_claim_ttl_is_a_failed_attempt(store: Arc<dyn OutboxAdmin>) {
    let id = store.enqueue(vec![msg("conf.stuck", Some("k"), "slow")]).await.unwrap()[0];
    let relay = Relay::builder(store.clone(), Arc::new(StuckBus))
        .claim_ttl(Duration::from_millis(600))
        .retry(RetryPolicy::default().max_attempts(3).backoff(Duration::from_millis(10), Duration::from_millis(50)))
        .fallback(FallbackConfig::default().interval(Duration::from_millis(20)).min_age(Duration::ZERO))
        .without_listener()
        .build()
        .unwrap()
        .spawn();
    let dead = eventually("the stuck message is dead-lettered", WAIT, || async {
        let dead = store.dead_letters(&DeadLetterQuery::default()).await.unwrap();
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    relay.shutdown().await.unwrap();
    assert_eq!(dead[0].message.id, id);
    assert_eq!(dead[0].message.attempts, 3, "every timed-out publish counted once");
    let error = dead[0].message.last_error.as_deref().unwrap_or_default();
    assert!(error.contains("did not finish within"), "{error}");
}

/// Panics on the message whose payload is `boom`; publishes the others.
#[derive(Debug, Default)]
struct PanickyBus {
    inner: MemoryBus,
}

#[async_trait::async_trait]
impl Bus for PanickyBus {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<PublishOutcome> {
        if batch.iter().any(|m| m.payload == b"boom") {
            panic!("bus bug: cannot publish boom");
        }
        self.inner.publish(batch).await
    }
}

/// A bus that panics on one message: that message is dead-lettered with an error naming the
/// panic; the rest of its batch is published, and the relay keeps running.
pub async fn a_panicking_bus_dead_letters_only_the_message_it_panics_on(store: Arc<dyn OutboxAdmin>) {
    let mut batch: Vec<NewMessage> = (0..9).map(|i| msg("conf.panic", Some(&format!("k{i}")), "ok")).collect();
    batch.insert(4, msg("conf.panic", Some("k-boom"), "boom"));
    let boom = batch[4].id;
    store.enqueue(batch).await.unwrap();
    let bus = Arc::new(PanickyBus::default());
    let relay = Relay::builder(store.clone(), bus.clone())
        .fallback(FallbackConfig::default().interval(Duration::from_millis(20)).min_age(Duration::ZERO))
        .without_listener()
        .build()
        .unwrap()
        .spawn();
    bus.inner.wait_for(9, WAIT).await.expect("the nine others are published");
    let dead = eventually("the panicking message is dead-lettered", WAIT, || async {
        let dead = store.dead_letters(&DeadLetterQuery::default()).await.unwrap();
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    assert_eq!(relay.health().ok(), Some(()), "a bus panic does not stop the engine");
    relay.shutdown().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.id, boom);
    let error = dead[0].message.last_error.as_deref().unwrap_or_default();
    assert!(error.contains("panicked") && error.contains("cannot publish boom"), "{error}");
    assert_eq!(store.stats().await.unwrap().pending, 0);
}
