//! Redis Streams bus behaviour against the real server.

mod common;

use outbox_core::{Bus, NewMessage, PublishOutcome};
use outbox_redis::{Dedup, DedupMode, RedisStreamsBus, dedup_key};

use common::stored;

#[tokio::test]
async fn entries_land_with_payload_id_key_and_headers() {
    let Some(mut conn) = common::conn().await else { return };
    let prefix = common::prefix();
    let bus = RedisStreamsBus::builder(conn.clone()).stream_prefix(&prefix).build().await.unwrap();
    let m = stored(NewMessage::new("orders", "hello").key("order-1").header("tenant", "acme"));
    assert_eq!(bus.publish(std::slice::from_ref(&m)).await, vec![PublishOutcome::Published]);
    let stream = format!("{prefix}orders");
    let got = common::read(&mut conn, &stream).await;
    common::del(&mut conn, &[&stream]).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, b"hello");
    assert_eq!(got[0].headers["Outbox-Message-Id"], m.id.to_string());
    assert_eq!(got[0].headers["Outbox-Key"], "order-1");
    assert_eq!(got[0].headers["Outbox-Topic"], "orders");
    assert_eq!(got[0].headers["tenant"], "acme");
}

#[tokio::test]
async fn with_lua_dedup_a_message_published_twice_is_appended_once() {
    let Some(mut conn) = common::conn().await else { return };
    let prefix = common::prefix();
    let bus = RedisStreamsBus::builder(conn.clone()).stream_prefix(&prefix).dedup(Dedup::Lua).build().await.unwrap();
    assert_eq!(bus.dedup_mode(), DedupMode::Lua);
    let m = stored(NewMessage::new("dedup", "once"));
    assert_eq!(bus.publish(std::slice::from_ref(&m)).await, vec![PublishOutcome::Published]);
    let other = stored(NewMessage::new("dedup", "other"));
    assert_eq!(bus.publish(&[m.clone(), other]).await, vec![PublishOutcome::Duplicate, PublishOutcome::Published]);
    let stream = format!("{prefix}dedup");
    assert_eq!(common::xlen(&mut conn, &stream).await, 2);
    let dedup = dedup_key(&stream, &m.id.to_string());
    let ttl: i64 = redis::cmd("PTTL").arg(&dedup).query_async(&mut conn).await.unwrap();
    assert!(ttl > 0, "the dedup key expires");
    common::del(&mut conn, &[&stream, &dedup]).await;
}

#[tokio::test]
async fn the_default_bus_drops_a_republished_message_on_any_server_version() {
    let Some(mut conn) = common::conn().await else { return };
    let prefix = common::prefix();
    let bus = RedisStreamsBus::builder(conn.clone()).stream_prefix(&prefix).build().await.unwrap();
    let mode = bus.dedup_mode();
    assert!(matches!(mode, DedupMode::Lua | DedupMode::Idmp), "{mode:?}");
    let m = stored(NewMessage::new("default", "once"));
    assert_eq!(bus.publish(std::slice::from_ref(&m)).await, vec![PublishOutcome::Published]);
    assert_eq!(bus.publish(std::slice::from_ref(&m)).await, vec![PublishOutcome::Duplicate]);
    let stream = format!("{prefix}default");
    assert_eq!(common::xlen(&mut conn, &stream).await, 1);
    common::del(&mut conn, &[&stream, &dedup_key(&stream, &m.id.to_string())]).await;
}

#[tokio::test]
async fn a_user_who_may_not_run_scripts_gets_a_build_error_naming_dedup_off() {
    let Some(server) = common::server::Server::start().await else { return };
    let mut admin = outbox_redis::connect(&server.url()).await.unwrap();
    let acl = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("noscript")
        .arg("on")
        .arg(">pw")
        .arg("~*")
        .arg("+@all")
        .arg("-@scripting")
        .clone();
    let () = acl.query_async(&mut admin).await.unwrap();
    let url = format!("redis://noscript:pw@127.0.0.1:{}", server.port);
    let err = RedisStreamsBus::from_url(&url).build().await.unwrap_err();
    assert!(
        !err.is_temporary() && err.to_string().contains("no permissions") && err.to_string().contains("Dedup::Off"),
        "{err}"
    );
    let bus = RedisStreamsBus::from_url(&url).dedup(Dedup::Off).build().await.unwrap();
    assert_eq!(bus.publish(&[stored(NewMessage::new("t", "x"))]).await, vec![PublishOutcome::Published]);
}

async fn set_maxmemory(conn: &mut redis::aio::ConnectionManager, limit: &str) {
    let () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(limit).query_async(conn).await.unwrap();
}

#[tokio::test]
async fn out_of_memory_is_retryable_and_the_same_publish_succeeds_once_memory_is_back() {
    // Below the memory an idle server uses, so every write is refused with OOM.
    let options = ["--maxmemory", "100kb", "--maxmemory-policy", "noeviction"];
    let Some(server) = common::server::Server::start_configured(&options).await else { return };
    let mut admin = outbox_redis::connect(&server.url()).await.unwrap();
    for dedup in [Dedup::Off, Dedup::Lua] {
        set_maxmemory(&mut admin, "100kb").await;
        let bus = RedisStreamsBus::from_url(server.url()).dedup(dedup).build().await.unwrap();
        let batch = vec![stored(NewMessage::new("oom", "1")), stored(NewMessage::new("oom", "2"))];
        for o in bus.publish(&batch).await {
            assert!(matches!(&o, PublishOutcome::Retryable(r) if r.contains("OOM")), "{dedup:?}: {o:?}");
        }
        assert_eq!(common::xlen(&mut admin, "outbox:oom").await, 0, "{dedup:?}");
        set_maxmemory(&mut admin, "0").await;
        // With Lua dedup, the refused message left no dedup key behind to make it a duplicate.
        assert_eq!(bus.publish(&batch).await, vec![PublishOutcome::Published; 2], "{dedup:?}");
        assert_eq!(common::xlen(&mut admin, "outbox:oom").await, 2, "{dedup:?}");
        let () = redis::cmd("FLUSHALL").query_async(&mut admin).await.unwrap();
    }
}

#[tokio::test]
async fn a_wrong_type_key_fails_alone_and_permanently() {
    let Some(mut conn) = common::conn().await else { return };
    for dedup in [Dedup::Off, Dedup::Lua] {
        let prefix = common::prefix();
        let bad = format!("{prefix}bad");
        let _: () = redis::cmd("SET").arg(&bad).arg("a string").query_async(&mut conn).await.unwrap();
        let bus = RedisStreamsBus::builder(conn.clone()).stream_prefix(&prefix).dedup(dedup).build().await.unwrap();
        let batch = vec![
            stored(NewMessage::new("good", "1")),
            stored(NewMessage::new("bad", "2")),
            stored(NewMessage::new("good", "3")),
        ];
        let outcomes = bus.publish(&batch).await;
        assert_eq!(outcomes[0], PublishOutcome::Published, "{dedup:?}");
        assert_eq!(outcomes[2], PublishOutcome::Published, "{dedup:?}");
        match &outcomes[1] {
            PublishOutcome::Permanent(r) => assert!(r.contains("WRONGTYPE") && r.contains(&bad), "{r}"),
            other => panic!("expected permanent, got {other:?}"),
        }
        let good = format!("{prefix}good");
        assert_eq!(common::xlen(&mut conn, &good).await, 2);
        // With Lua dedup, the failed message must stay publishable (its dedup key is removed).
        if dedup == Dedup::Lua {
            common::del(&mut conn, &[&bad]).await;
            assert_eq!(bus.publish(&batch[1..2]).await, vec![PublishOutcome::Published]);
        }
        common::del(&mut conn, &[&bad, &good]).await;
    }
}

#[tokio::test]
async fn max_len_trims_the_stream() {
    let Some(mut conn) = common::conn().await else { return };
    let prefix = common::prefix();
    let bus = RedisStreamsBus::builder(conn.clone()).stream_prefix(&prefix).max_len(10).build().await.unwrap();
    let batch: Vec<_> = (0..1000).map(|i| stored(NewMessage::new("trim", format!("{i}")))).collect();
    assert!(bus.publish(&batch).await.iter().all(|o| *o == PublishOutcome::Published));
    let stream = format!("{prefix}trim");
    let len = common::xlen(&mut conn, &stream).await;
    // `~` trims whole macro nodes (100 entries by default), so the length stays near, not at, 10.
    assert!((10..1000).contains(&len), "len {len}");
    common::del(&mut conn, &[&stream]).await;
}

#[tokio::test]
async fn bad_settings_and_urls_are_clear_errors() {
    let Some(conn) = common::conn().await else { return };
    let err = RedisStreamsBus::builder(conn).max_len(0).build().await.unwrap_err();
    assert!(err.to_string().contains("redis.max_len"), "{err}");
    let err = outbox_redis::connect("http://x").await.unwrap_err();
    assert!(err.to_string().contains("redis.url"), "{err}");
    let err = outbox_redis::connect("redis://127.0.0.1:1").await.unwrap_err();
    assert!(err.is_temporary() && err.to_string().contains("127.0.0.1:1"), "{err}");
}

#[tokio::test]
async fn a_stalled_server_makes_the_batch_retryable_within_the_response_timeout() {
    let Some(server) = common::server::Server::start().await else { return };
    let bus = RedisStreamsBus::from_url(server.url())
        .response_timeout(std::time::Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let batch = vec![stored(NewMessage::new("stall", "1")), stored(NewMessage::new("stall", "2"))];
    server.stall();
    let outcomes = bus.publish(&batch).await;
    server.resume();
    for o in &outcomes {
        assert!(matches!(o, PublishOutcome::Retryable(r) if r.contains("timed out")), "{o:?}");
    }
    outbox_core::testkit::eventually("the thawed server to take the batch", std::time::Duration::from_secs(10), || {
        let (bus, batch) = (&bus, &batch);
        async move { bus.publish(batch).await.iter().all(PublishOutcome::is_delivered).then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn idmp_or_lua_falls_back_to_the_script_before_redis_8_6() {
    let Some(_) = common::conn().await else { return };
    let bus = RedisStreamsBus::from_url(common::url()).dedup(Dedup::IdmpOrLua).build().await.unwrap();
    let mode = bus.dedup_mode();
    assert!(matches!(mode, DedupMode::Lua | DedupMode::Idmp), "{mode:?}");
    let err = RedisStreamsBus::from_url("not a url").build().await.unwrap_err();
    assert!(err.to_string().contains("redis.url"), "{err}");
    let err = RedisStreamsBus::from_url(common::url()).response_timeout(std::time::Duration::ZERO).build().await;
    assert!(err.unwrap_err().to_string().contains("redis.response_timeout"));
}
