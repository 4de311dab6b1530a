//! The Redis Streams consumer on a real local Redis Cluster (three masters, see
//! `common/cluster.rs`): a poison entry is dead-lettered whether or not the dead-letter stream
//! shares the stream's slot, and the other entries keep flowing.
#![cfg(feature = "cluster")]

mod common;

use std::time::Duration;

use outbox_core::consumer::{
    ConsumerConfig, ConsumerHandle, ConsumerStats, Delivery, HandlerError, Processed, handler_fn,
};
use outbox_core::testkit::eventually;
use outbox_redis::PAYLOAD_FIELD;
use outbox_redis::cluster::slot;
use outbox_redis::consumer::{FIELD_DELIVERIES, FIELD_ERROR, FIELD_ORIGINAL_ID, RedisStreamsConsumer};
use redis::AsyncCommands;
use redis::cluster_async::ClusterConnection;
use redis::streams::{StreamPendingReply, StreamRangeReply};

use common::cluster::Cluster;

const WAIT: Duration = Duration::from_secs(20);

async fn add(conn: &mut ClusterConnection, stream: &str, id: &str, payload: &str) -> String {
    conn.xadd(stream, "*", &[("Outbox-Message-Id", id), (PAYLOAD_FIELD, payload)]).await.unwrap()
}

async fn wait_for(handle: &ConsumerHandle, what: &str, done: impl Fn(ConsumerStats) -> bool) {
    eventually(what, WAIT, || {
        let ok = done(handle.stats());
        async move { ok.then_some(()) }
    })
    .await;
}

/// A dead-letter stream name next to `stream` in another slot (names are random, so look).
fn dead_letter_in_another_slot(prefix: &str, stream: &str) -> String {
    (0..).map(|n| format!("{prefix}dead-{n}")).find(|d| slot(d) != slot(stream)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_entry_is_dead_lettered_across_slots_while_others_flow() {
    let Some(cluster) = Cluster::shared().await else { return };
    // The test's own connection: the consumer's blocking XREADGROUP holds its node link.
    let mut conn = cluster.connect().await;
    let prefix = common::prefix();
    let split_stream = format!("{prefix}orders");
    let split = (split_stream.clone(), dead_letter_in_another_slot(&prefix, &split_stream));
    // A shared hash tag: one slot, so the dead letter still moves in one script.
    let tagged = (format!("{prefix}{{orders}}"), format!("{prefix}dead:{{orders}}"));
    assert_eq!(slot(&tagged.0), slot(&tagged.1));

    // What the consumer did before: one transaction over both keys is refused across slots.
    let refused: redis::RedisResult<()> = redis::pipe()
        .atomic()
        .xadd(&split.1, "*", &[("f", "v")])
        .ignore()
        .xack(&split.0, "g", &["0-1"])
        .ignore()
        .query_async(&mut conn)
        .await;
    assert!(refused.is_err_and(|e| e.code() == Some("CROSSSLOT") || e.to_string().contains("slot")));

    for (stream, dead) in [&split, &tagged] {
        add(&mut conn, stream, "ok1", "fine").await;
        let poison_id = add(&mut conn, stream, "bad", "poison").await;
        add(&mut conn, stream, "ok2", "fine").await;
        let handler = handler_fn(|d: Delivery| async move {
            if d.payload == b"poison" {
                return Err(HandlerError::retry(format!("cannot handle (attempt {})", d.attempt)));
            }
            Ok(Processed::Done(()))
        });
        let config = ConsumerConfig::default()
            .ack_wait(Duration::from_millis(300))
            .fetch_wait(Duration::from_millis(100))
            .max_deliveries(2);
        let consumer = RedisStreamsConsumer::cluster(cluster.connect().await, stream, "g", "c1", dead)
            .config(config)
            .spawn(handler)
            .await
            .unwrap();
        wait_for(&consumer, "2 processed and 1 dead-lettered", |s| s.processed == 2 && s.dead_lettered == 1).await;
        // Still flowing after the dead letter.
        add(&mut conn, stream, "ok3", "fine").await;
        wait_for(&consumer, "the entry after the dead letter processed", |s| s.processed == 3).await;
        assert_eq!(consumer.stats().retried, 1, "{stream}");

        let letters: StreamRangeReply = conn.xrange_all(dead).await.unwrap();
        assert_eq!(letters.ids.len(), 1, "{dead}");
        let letter = &letters.ids[0];
        assert_eq!(letter.get::<String>("Outbox-Message-Id").as_deref(), Some("bad"));
        assert_eq!(letter.get::<String>(PAYLOAD_FIELD).as_deref(), Some("poison"));
        assert_eq!(letter.get::<String>(FIELD_ERROR).as_deref(), Some("cannot handle (attempt 2)"));
        assert_eq!(letter.get::<String>(FIELD_DELIVERIES).as_deref(), Some("2"));
        assert_eq!(letter.get::<String>(FIELD_ORIGINAL_ID), Some(poison_id));
        let pending: StreamPendingReply = conn.xpending(stream, "g").await.unwrap();
        assert_eq!(pending.count(), 0, "{stream}: the poison entry was acknowledged too");
        consumer.shutdown().await.unwrap();
        // One DEL per key: a multi-key DEL across slots is refused.
        common::del(&mut conn, &[stream]).await;
        common::del(&mut conn, &[dead]).await;
    }
}
