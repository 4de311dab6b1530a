//! The bus on a real local Redis Cluster (three masters, see `common/cluster.rs`): the shared
//! Bus contract, a batch spread over many slots, Lua dedup and hash tags, and a failing key.

mod common;

use std::collections::HashSet;

use outbox_core::testkit::bus::{BusFixture, Received};
use outbox_core::{Bus, NewMessage, OutboxMessage, PublishOutcome};
use outbox_redis::cluster::slot;
use outbox_redis::{Dedup, DedupMode, RedisStreamsBus, dedup_key};
use redis::cluster_async::ClusterConnection;

use common::cluster::Cluster;
use common::stored;

/// A bus on `cluster`, its connection (for reading back) and a fresh stream prefix.
async fn bus(cluster: &Cluster, dedup: Dedup) -> (RedisStreamsBus, ClusterConnection, String) {
    let conn = cluster.connect().await;
    let prefix = common::prefix();
    let bus = RedisStreamsBus::cluster_builder(conn.clone()).stream_prefix(&prefix).dedup(dedup).build().await;
    (bus.expect("cluster bus"), conn, prefix)
}

async fn fixture(dedup: Dedup) -> Option<BusFixture> {
    let cluster = Cluster::shared().await?;
    let (bus, conn, prefix) = bus(&cluster, dedup).await;
    Some(common::conformance_fixture(bus, conn, &prefix))
}

mod plain {
    async fn setup() -> Option<outbox_core::testkit::bus::BusFixture> {
        super::fixture(outbox_redis::Dedup::Off).await
    }
    outbox_core::bus_conformance!(setup);
}

mod lua_dedup {
    async fn setup() -> Option<outbox_core::testkit::bus::BusFixture> {
        super::fixture(outbox_redis::Dedup::Lua).await
    }
    outbox_core::bus_conformance!(setup);
}

fn header<'a>(r: &'a Received, name: &str) -> &'a str {
    r.headers.get(name).map_or("", String::as_str)
}

/// How many of `streams` each master holds, asked of each master directly: a master answers
/// `MOVED` for a key in a slot it does not own.
async fn streams_per_master(cluster: &Cluster, streams: &[String]) -> Vec<usize> {
    let mut counts = Vec::new();
    for mut node in cluster.node_connections().await {
        let mut held = 0;
        for stream in streams {
            let exists: redis::RedisResult<u64> = redis::cmd("EXISTS").arg(stream).query_async(&mut node).await;
            held += usize::from(exists == Ok(1));
        }
        counts.push(held);
    }
    counts
}

/// Every stream exists, each on one master, and every master holds some: the batch really
/// spanned the whole cluster.
async fn assert_spread_over_every_master(cluster: &Cluster, streams: &[String]) {
    let counts = streams_per_master(cluster, streams).await;
    assert_eq!(counts.iter().sum::<usize>(), streams.len(), "{counts:?}");
    assert!(counts.iter().all(|&n| n > 0), "a master got none of the streams: {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_fifty_slots_lands_in_order_with_every_field() {
    let Some(cluster) = Cluster::shared().await else { return };
    for dedup in [Dedup::Off, Dedup::Lua] {
        let (bus, mut conn, prefix) = bus(&cluster, dedup).await;
        // Equal-length names: CRC16 is linear, so whether two of them share a slot does not
        // depend on the random prefix (names of mixed lengths collide now and then).
        let topics: Vec<String> = (0..50).map(|t| format!("topic-{t:02}")).collect();
        let streams: Vec<String> = topics.iter().map(|t| format!("{prefix}{t}")).collect();
        let slots: HashSet<_> = streams.iter().map(|s| slot(s)).collect();
        assert_eq!(slots.len(), 50, "one slot per topic");
        // Topics interleaved, so each slot group is picked out of the whole batch.
        let batch: Vec<OutboxMessage> = (0..4)
            .flat_map(|seq| {
                topics.iter().map(move |t| {
                    stored(
                        NewMessage::new(t.clone(), format!("{t}/{seq}"))
                            .key(format!("k-{t}"))
                            .header("seq", seq.to_string()),
                    )
                })
            })
            .collect();
        let outcomes = bus.publish(&batch).await;
        assert_eq!(outcomes, vec![PublishOutcome::Published; batch.len()], "{dedup:?}");

        for t in &topics {
            let got = common::read(&mut conn, &format!("{prefix}{t}")).await;
            let sent: Vec<&OutboxMessage> = batch.iter().filter(|m| &m.topic == t).collect();
            assert_eq!(got.len(), sent.len(), "{dedup:?} {t}");
            for (seq, (r, m)) in got.iter().zip(&sent).enumerate() {
                assert_eq!(r.payload, format!("{t}/{seq}").into_bytes(), "{dedup:?}: per-stream order");
                assert_eq!(header(r, "Outbox-Message-Id"), m.id.to_string());
                assert_eq!(header(r, "Outbox-Topic"), t);
                assert_eq!(header(r, "Outbox-Key"), format!("k-{t}"));
                assert_eq!(header(r, "seq"), seq.to_string());
            }
        }
        assert_spread_over_every_master(&cluster, &streams).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lua_dedup_a_repeat_is_appended_once_and_tagged_keys_share_a_slot() {
    let Some(cluster) = Cluster::shared().await else { return };
    let (bus, mut conn, prefix) = bus(&cluster, Dedup::Lua).await;
    assert_eq!(bus.dedup_mode(), DedupMode::Lua);
    // `{orders}` is the hash tag: the stream `<prefix>{orders}` and its dedup keys
    // (`<prefix>{orders}:dedup:<id>`) hash on `orders` alone. An untagged stream's dedup keys
    // use the whole stream key as their tag.
    let (tagged, untagged) = (format!("{prefix}{{orders}}"), format!("{prefix}plain"));
    let first = vec![stored(NewMessage::new("{orders}", "o1")), stored(NewMessage::new("plain", "p1"))];
    assert_eq!(bus.publish(&first).await, vec![PublishOutcome::Published; 2]);
    let again = vec![first[0].clone(), stored(NewMessage::new("{orders}", "o2")), first[1].clone()];
    let outcomes = bus.publish(&again).await;
    assert_eq!(outcomes, vec![PublishOutcome::Duplicate, PublishOutcome::Published, PublishOutcome::Duplicate]);
    assert_eq!(common::xlen(&mut conn, &tagged).await, 2);
    assert_eq!(common::xlen(&mut conn, &untagged).await, 1);

    for (stream, m) in [(&tagged, &first[0]), (&untagged, &first[1])] {
        let dedup = dedup_key(stream, &m.id.to_string());
        assert_eq!(slot(&dedup), slot(stream), "{dedup}");
        let ttl: i64 = redis::cmd("PTTL").arg(&dedup).query_async(&mut conn).await.unwrap();
        assert!(ttl > 0, "the dedup key {dedup} exists and expires");
        // The server agrees: a script touching both keys is refused (CROSSSLOT) unless they
        // share a slot.
        let both: i64 = redis::cmd("EVAL")
            .arg("return redis.call('EXISTS', KEYS[1], KEYS[2])")
            .arg(2)
            .arg(stream)
            .arg(&dedup)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(both, 2, "{stream} and {dedup}");
    }
    let server_slot = |key: String| {
        let mut conn = conn.clone();
        async move { redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query_async::<u16>(&mut conn).await.unwrap() }
    };
    let orders = server_slot("orders".into()).await;
    assert_eq!(server_slot(tagged.clone()).await, orders);
    assert_eq!(server_slot(dedup_key(&tagged, &first[0].id.to_string())).await, orders);
    // The same with the default prefix: `outbox:{orders}` and `outbox:{orders}:dedup:<id>`.
    assert_eq!(server_slot("outbox:{orders}".into()).await, orders);
    assert_eq!(server_slot(dedup_key("outbox:{orders}", &first[0].id.to_string())).await, orders);
    assert_eq!(slot(&tagged), redis::cluster_routing::Slot::new(orders).unwrap(), "client and server agree");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lua_dedup_every_node_gets_the_script_back_after_losing_it() {
    // Its own cluster: flushing scripts must not reach the other tests.
    let Some(cluster) = Cluster::own().await else { return };
    let (bus, mut conn, prefix) = bus(&cluster, Dedup::Lua).await;
    for mut node in cluster.node_connections().await {
        let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut node).await.unwrap();
    }
    // A keyless `SCRIPT LOAD` alone would reach one random node; the batch needs all three.
    let batch: Vec<OutboxMessage> = (0..30).map(|t| stored(NewMessage::new(format!("t{t:02}"), "x"))).collect();
    assert_eq!(bus.publish(&batch).await, vec![PublishOutcome::Published; batch.len()]);
    let streams: Vec<String> = (0..30).map(|t| format!("{prefix}t{t:02}")).collect();
    for stream in &streams {
        assert_eq!(common::xlen(&mut conn, stream).await, 1, "{stream}");
    }
    assert_spread_over_every_master(&cluster, &streams).await;
    assert_eq!(bus.publish(&batch).await, vec![PublishOutcome::Duplicate; batch.len()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_type_key_fails_alone_and_permanently_while_the_rest_lands() {
    let Some(cluster) = Cluster::shared().await else { return };
    for dedup in [Dedup::Off, Dedup::Lua] {
        let (bus, mut conn, prefix) = bus(&cluster, dedup).await;
        let bad = format!("{prefix}bad");
        let _: () = redis::cmd("SET").arg(&bad).arg("a string").query_async(&mut conn).await.unwrap();
        let mut batch: Vec<OutboxMessage> =
            (0..20).map(|t| stored(NewMessage::new(format!("good-{t}"), "g"))).collect();
        batch.insert(7, stored(NewMessage::new("bad", "b")));
        let outcomes = bus.publish(&batch).await;
        for (i, o) in outcomes.iter().enumerate() {
            if i == 7 {
                assert!(
                    matches!(o, PublishOutcome::Permanent(r) if r.contains("WRONGTYPE") && r.contains(&bad)),
                    "{dedup:?}: {o:?}"
                );
            } else {
                assert_eq!(o, &PublishOutcome::Published, "{dedup:?} #{i}");
            }
        }
        for t in 0..20 {
            assert_eq!(common::xlen(&mut conn, &format!("{prefix}good-{t}")).await, 1, "{dedup:?} good-{t}");
        }
        // Still publishable once the key is fixed (with Lua dedup: its dedup key was removed).
        common::del(&mut conn, &[&bad]).await;
        assert_eq!(bus.publish(&batch[7..8]).await, vec![PublishOutcome::Published], "{dedup:?}");
        assert_eq!(common::xlen(&mut conn, &bad).await, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lua_dedup_a_stream_key_that_splits_from_its_dedup_key_fails_alone() {
    let Some(cluster) = Cluster::shared().await else { return };
    let (bus, mut conn, prefix) = bus(&cluster, Dedup::Lua).await;
    // `}` without a `{` before it, and an empty tag `{}`: wrapping such a key in a hash tag
    // cannot reproduce its slot, so the script could not run on one node.
    let batch = vec![
        stored(NewMessage::new("a}b", "1")),
        stored(NewMessage::new("ok", "2")),
        stored(NewMessage::new("x{}y", "3")),
        stored(NewMessage::new("{fine}", "4")),
    ];
    let outcomes = bus.publish(&batch).await;
    for i in [0, 2] {
        assert!(matches!(&outcomes[i], PublishOutcome::Permanent(r) if r.contains("hash tag")), "{:?}", outcomes[i]);
    }
    assert_eq!((&outcomes[1], &outcomes[3]), (&PublishOutcome::Published, &PublishOutcome::Published));
    assert_eq!(common::xlen(&mut conn, &format!("{prefix}ok")).await, 1);
    assert_eq!(common::xlen(&mut conn, &format!("{prefix}{{fine}}")).await, 1);
    assert_eq!(common::xlen(&mut conn, &format!("{prefix}a}}b")).await, 0);
}
