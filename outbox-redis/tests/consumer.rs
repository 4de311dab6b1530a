//! The Redis Streams consumer runner on a real server: a duplicate entry is skipped by the
//! (here in-memory) inbox, a dead consumer's pending entry is claimed by another, and what
//! keeps failing goes to the dead-letter stream with its error while others flow, and an
//! entry whose dead letter cannot be written stays pending instead of being lost.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox_core::consumer::{ConsumerConfig, ConsumerStats, Delivery, HandlerError, Processed, handler_fn};
use outbox_core::testkit::eventually;
use outbox_redis::PAYLOAD_FIELD;
use outbox_redis::consumer::{FIELD_DELIVERIES, FIELD_ERROR, FIELD_ORIGINAL_ID, RedisStreamsConsumer};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;

const WAIT: Duration = Duration::from_secs(20);

async fn add(conn: &mut ConnectionManager, stream: &str, id: &str, payload: &str) {
    let _: String = conn.xadd(stream, "*", &[("Outbox-Message-Id", id), (PAYLOAD_FIELD, payload)]).await.unwrap();
}

/// Effects once per id, as the SQL inbox would record them.
#[derive(Clone, Default)]
struct Effects(Arc<Mutex<(HashSet<String>, Vec<String>)>>);

impl Effects {
    fn apply(&self, d: &Delivery) -> Processed<()> {
        let mut state = self.0.lock().unwrap();
        if !state.0.insert(d.id.clone()) {
            return Processed::Duplicate;
        }
        state.1.push(d.id.clone());
        Processed::Done(())
    }
    fn count(&self) -> usize {
        self.0.lock().unwrap().1.len()
    }
}

async fn wait_for(handle: &outbox_core::consumer::ConsumerHandle, what: &str, done: impl Fn(ConsumerStats) -> bool) {
    eventually(what, WAIT, || {
        let ok = done(handle.stats());
        async move { ok.then_some(()) }
    })
    .await;
}

fn config() -> ConsumerConfig {
    ConsumerConfig::default().ack_wait(Duration::from_millis(300)).fetch_wait(Duration::from_millis(100))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_skipped_and_a_dead_consumers_entries_are_claimed() {
    let Some(mut conn) = common::conn().await else { return };
    let prefix = common::prefix();
    let (stream, dead) = (format!("{prefix}orders"), format!("{prefix}dead"));
    add(&mut conn, &stream, "m1", "one").await;
    add(&mut conn, &stream, "m1", "one again").await;
    add(&mut conn, &stream, "m2", "two").await;

    // The first consumer takes everything and hangs: it dies with three entries pending.
    let taken = Arc::new(tokio::sync::Notify::new());
    let signal = taken.clone();
    let hanging = handler_fn(move |_d| {
        let signal = signal.clone();
        async move {
            signal.notify_one();
            std::future::pending::<()>().await;
            Ok(Processed::Done(()))
        }
    });
    let first = RedisStreamsConsumer::new(conn.clone(), &stream, "g", "c1", &dead)
        .config(config())
        .spawn(hanging)
        .await
        .unwrap();
    tokio::time::timeout(WAIT, taken.notified()).await.expect("the first consumer read");
    first.abort();

    let effects = Effects::default();
    let fx = effects.clone();
    let handler = handler_fn(move |d: Delivery| {
        let fx = fx.clone();
        async move { Ok(fx.apply(&d)) }
    });
    let second = RedisStreamsConsumer::new(conn.clone(), &stream, "g", "c2", &dead)
        .config(config())
        .spawn(handler)
        .await
        .unwrap();
    wait_for(&second, "3 entries acknowledged", |s| s.processed + s.duplicates == 3).await;
    assert_eq!((second.stats().processed, second.stats().duplicates), (2, 1));
    assert_eq!(effects.count(), 2);
    let pending: redis::streams::StreamPendingReply = conn.xpending(&stream, "g").await.unwrap();
    assert_eq!(pending.count(), 0, "everything was acknowledged");
    second.shutdown().await.unwrap();
    let _: () = conn.del(&[&stream, &dead]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_entries_are_dead_lettered_with_their_error_while_others_flow() {
    let Some(mut conn) = common::conn().await else { return };
    let prefix = common::prefix();
    let (stream, dead) = (format!("{prefix}orders"), format!("{prefix}dead"));
    add(&mut conn, &stream, "ok1", "fine").await;
    add(&mut conn, &stream, "bad", "poison").await;
    add(&mut conn, &stream, "ok2", "fine").await;

    let handler = handler_fn(|d: Delivery| async move {
        if d.payload == b"poison" {
            return Err(HandlerError::retry(format!("cannot handle (attempt {})", d.attempt)));
        }
        Ok(Processed::Done(()))
    });
    let consumer = RedisStreamsConsumer::new(conn.clone(), &stream, "g", "c1", &dead)
        .config(config().max_deliveries(2))
        .spawn(handler)
        .await
        .unwrap();
    wait_for(&consumer, "2 processed and 1 dead-lettered", |s| s.processed == 2 && s.dead_lettered == 1).await;
    assert_eq!(consumer.stats().retried, 1);
    let letters: redis::streams::StreamRangeReply = conn.xrange_all(&dead).await.unwrap();
    assert_eq!(letters.ids.len(), 1);
    let letter = &letters.ids[0];
    assert_eq!(letter.get::<String>("Outbox-Message-Id").as_deref(), Some("bad"));
    assert_eq!(letter.get::<String>(PAYLOAD_FIELD).as_deref(), Some("poison"));
    assert_eq!(letter.get::<String>(FIELD_ERROR).as_deref(), Some("cannot handle (attempt 2)"));
    assert_eq!(letter.get::<String>(FIELD_DELIVERIES).as_deref(), Some("2"));
    consumer.shutdown().await.unwrap();
    let _: () = conn.del(&[&stream, &dead]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_whose_dead_letter_cannot_be_written_stays_pending_until_it_can() {
    let Some(mut conn) = common::conn().await else { return };
    // The runner's own connection: its blocking XREADGROUP would stall this test's polls.
    let Some(runner_conn) = common::conn().await else { return };
    let prefix = common::prefix();
    let (stream, dead) = (format!("{prefix}orders"), format!("{prefix}dead"));
    // Not a stream: the dead letter's XADD fails with WRONGTYPE when it runs.
    let _: () = conn.set(&dead, "x").await.unwrap();
    let poison: String =
        conn.xadd(&stream, "*", &[("Outbox-Message-Id", "bad"), (PAYLOAD_FIELD, "poison")]).await.unwrap();

    let attempts = Arc::new(AtomicU64::new(0));
    let seen = attempts.clone();
    let handler = handler_fn(move |d: Delivery| {
        seen.fetch_max(d.attempt, Ordering::SeqCst);
        async move { Err::<Processed<()>, _>(HandlerError::retry("cannot handle")) }
    });
    let consumer = RedisStreamsConsumer::new(runner_conn, &stream, "g", "c1", &dead)
        .config(config().max_deliveries(2))
        .spawn(handler)
        .await
        .unwrap();

    // After delivery 2 the runner tries to dead-letter it. Kept pending, it is delivered a
    // third time; acknowledged without its letter, it is gone from the group.
    let kept = eventually("the dead-lettering attempt", WAIT, || {
        let mut conn = conn.clone();
        let (stream, poison, attempts) = (stream.clone(), poison.clone(), attempts.clone());
        async move {
            // The attempts first: an entry seen delivered is in the group's pending list
            // from then on, unless acknowledged (read the other way round, a poll can see the
            // list from before the first delivery and the attempt after it).
            let seen = attempts.load(Ordering::SeqCst);
            let pending: redis::streams::StreamPendingCountReply =
                conn.xpending_count(&stream, "g", &poison, &poison, 1).await.unwrap();
            match seen {
                n if n > 2 => Some(true),
                n if n >= 1 && pending.ids.is_empty() => Some(false),
                _ => None,
            }
        }
    })
    .await;
    assert!(kept, "the poison entry was acknowledged although its dead letter was not written: it is lost");
    let pending: redis::streams::StreamPendingCountReply =
        conn.xpending_count(&stream, "g", &poison, &poison, 1).await.unwrap();
    assert_eq!(pending.ids.len(), 1, "the poison entry is still pending in the group");
    let stats = consumer.stats();
    assert_eq!((stats.processed, stats.duplicates, stats.dead_lettered), (0, 0, 0), "nothing acknowledged");
    let kind: String = redis::cmd("TYPE").arg(&dead).query_async(&mut conn).await.unwrap();
    assert_eq!(kind, "string", "the dead-letter key is untouched");

    // Once the key can take a stream, the next attempt dead-letters the entry.
    let _: () = conn.del(&dead).await.unwrap();
    wait_for(&consumer, "the poison entry dead-lettered", |s| s.dead_lettered == 1).await;
    let letters: redis::streams::StreamRangeReply = conn.xrange_all(&dead).await.unwrap();
    assert_eq!(letters.ids.len(), 1);
    assert_eq!(letters.ids[0].get::<String>(FIELD_ORIGINAL_ID), Some(poison));
    assert!(letters.ids[0].get::<u64>(FIELD_DELIVERIES).is_some_and(|n| n > 2));
    let pending: redis::streams::StreamPendingReply = conn.xpending(&stream, "g").await.unwrap();
    assert_eq!(pending.count(), 0, "acknowledged with its dead letter");
    consumer.shutdown().await.unwrap();
    let _: () = conn.del(&[&stream, &dead]).await.unwrap();
}
