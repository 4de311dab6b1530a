//! The `outbox` binary against Postgres + NATS and Postgres + Redis.

mod common;

use std::time::Duration;

use common::{Db, NatsSink, RelayProcess, run, stderr, stdout};
use outbox::{Disposition, Failure, Lease, NewMessage, OutboxStore};

fn env_of(db: &Db) -> Vec<(&'static str, String)> {
    db.env()
}

fn refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_and_status_json() {
    let Some(db) = Db::new().await else { return };
    let env = env_of(&db);
    let out = run(&["migrate"], &refs(&env));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&db.table));
    db.write("orders", 5, 2, 5).await;
    let out = run(&["status", "--json", "--top", "1"], &refs(&env));
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["pending"], 5);
    assert_eq!(json["dead"], 0);
    assert_eq!(json["top_keys"][0]["key"], "key-0");
    assert_eq!(json["top_keys"][0]["pending"], 3);
    assert!(json["oldest_pending_age_seconds"].as_f64().is_some());
    let human = run(&["status"], &refs(&env));
    assert!(stdout(&human).contains("pending   5"), "{}", stdout(&human));
    db.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_to_nats_drains_on_sigterm_and_loses_nothing() {
    let (Some(db), Some(sink)) = (Db::new().await, NatsSink::new().await) else { return };
    let mut env = env_of(&db);
    env.extend([
        ("NATS_URL", common::nats_url()),
        ("OUTBOX_STREAM", sink.stream.clone()),
        ("OUTBOX_PREFIX", sink.prefix.clone()),
    ]);
    let committed = db.write("orders", 500, 20, 50).await;
    let relay = RelayProcess::start(&env, &["--bus", "nats", "--interval", "100ms", "--min-age", "0s"]);
    assert!(
        common::wait_until(Duration::from_secs(30), || async { sink.count().await >= 500 }).await,
        "first 500 published"
    );
    let more = db.write("orders", 300, 20, 1).await;
    let (code, err) = relay.terminate().await;
    assert_eq!(code, Some(0), "clean exit on SIGTERM: {err}");
    // Whatever the drain did not reach is still committed in the table: start again to finish.
    let relay = RelayProcess::start(&env, &["--bus", "nats", "--interval", "100ms", "--min-age", "0s"]);
    assert!(common::wait_until(Duration::from_secs(30), || async { db.pending().await == 0 }).await, "drained");
    let (code, _) = relay.terminate().await;
    assert_eq!(code, Some(0));
    let mut all = committed;
    for (k, v) in more {
        all.entry(k).or_default().extend(v);
    }
    let verdict = common::Verdict::of(&all, &sink.stored().await);
    assert_eq!((verdict.lost, verdict.duplicates_seen, verdict.order_violations), (0, 0, 0), "{verdict:?}");
    sink.delete().await;
    db.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_to_redis_drains_on_sigterm_and_loses_nothing() {
    let Some(db) = Db::new().await else { return };
    let redis_url = common::redis_url();
    let Ok(mut conn) = outbox::redis::connect(&redis_url).await else {
        outbox::testkit::unreachable_server::<()>("OUTBOX_TEST_REDIS_URL", &redis_url, "unreachable");
        return;
    };
    let prefix = format!("cli:{}:", outbox::testkit::unique_suffix());
    let mut env = env_of(&db);
    env.extend([("REDIS_URL", redis_url.clone()), ("OUTBOX_PREFIX", prefix.clone())]);
    let committed = db.write("orders", 400, 10, 40).await;
    let relay = RelayProcess::start(&env, &["--bus", "redis", "--interval", "100ms", "--min-age", "0s"]);
    assert!(common::wait_until(Duration::from_secs(30), || async { db.pending().await == 0 }).await, "drained");
    let (code, err) = relay.terminate().await;
    assert_eq!(code, Some(0), "{err}");
    let stream = format!("{prefix}orders");
    let received = common::redis_stream(&mut conn, &stream).await;
    let verdict = common::Verdict::of(&committed, &received);
    assert_eq!((verdict.lost, verdict.duplicates_seen, verdict.order_violations), (0, 0, 0), "{verdict:?}");
    let _: i64 = outbox::redis::redis::cmd("DEL").arg(&stream).query_async(&mut conn).await.unwrap();
    db.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_list_show_replay_and_purge() {
    let Some(db) = Db::new().await else { return };
    let env = env_of(&db);
    let ids = db
        .store
        .enqueue(vec![
            NewMessage::new("billing", "{\"a\":1}"),
            NewMessage::new("billing", "2"),
            NewMessage::new("mail", "3"),
        ])
        .await
        .unwrap();
    let lease = Lease::new(Duration::from_secs(30));
    db.store.claim_ids(&ids, &lease).await.unwrap();
    let failures: Vec<_> = ids
        .iter()
        .map(|id| Failure { id: *id, error: "payload too large".into(), disposition: Disposition::DeadLetter })
        .collect();
    db.store.fail(&failures, &lease).await.unwrap();

    let out = run(&["dead", "list", "--topic", "billing", "--json"], &refs(&env));
    assert!(out.status.success(), "{}", stderr(&out));
    let list: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[0]["last_error"], "payload too large");

    let out = run(&["dead", "show", &ids[0].to_string()], &refs(&env));
    let shown: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(shown["payload"]["a"], 1, "JSON payloads are shown as JSON");

    let unknown = uuid::Uuid::now_v7().to_string();
    let out = run(&["dead", "replay", &unknown, &ids[0].to_string()], &refs(&env));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(&unknown) && stderr(&out).contains("nothing replayed"), "{}", stderr(&out));
    assert_eq!(db.store.stats().await.unwrap().dead, 3, "an unknown id changes nothing");

    let out = run(&["dead", "replay", &ids[0].to_string()], &refs(&env));
    assert!(stdout(&out).contains("replayed 1"), "{}", stdout(&out));
    let out = run(&["dead", "replay", "--topic", "mail"], &refs(&env));
    assert!(stdout(&out).contains("replayed 1"));
    let out = run(&["dead", "purge", "--older-than", "1h"], &refs(&env));
    assert!(stdout(&out).contains("purged 0"), "too young to purge");
    let out = run(&["dead", "purge", "--older-than", "0s"], &refs(&env));
    assert!(stdout(&out).contains("purged 1"), "{}", stdout(&out));
    let out = run(&["dead", "replay", "--all"], &refs(&env));
    assert!(stdout(&out).contains("replayed 0"));
    assert_eq!(db.store.stats().await.unwrap().pending, 2);
    db.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_published_deletes_kept_rows_in_batches() {
    let (Some(db), Some(sink)) = (Db::new().await, NatsSink::new().await) else { return };
    let mut env = env_of(&db);
    env.extend([
        ("NATS_URL", common::nats_url()),
        ("OUTBOX_STREAM", sink.stream.clone()),
        ("OUTBOX_PREFIX", sink.prefix.clone()),
    ]);
    db.write("orders", 25, 5, 25).await;
    let relay =
        RelayProcess::start(&env, &["--bus", "nats", "--retention", "keep", "--min-age", "0s", "--interval", "100ms"]);
    assert!(common::wait_until(Duration::from_secs(30), || async { db.pending().await == 0 }).await);
    relay.terminate().await;
    let out = run(&["purge-published", "--older-than", "0s", "--batch", "10"], &refs(&env));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("purged 25"), "{}", stdout(&out));
    sink.delete().await;
    db.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoint_reports_database_and_broker() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (Some(db), Some(sink)) = (Db::new().await, NatsSink::new().await) else { return };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut env = env_of(&db);
    env.extend([
        ("NATS_URL", common::nats_url()),
        ("OUTBOX_STREAM", sink.stream.clone()),
        ("OUTBOX_PREFIX", sink.prefix.clone()),
    ]);
    let addr = format!("127.0.0.1:{port}");
    let relay = RelayProcess::start(&env, &["--health-addr", &addr]);
    let get = || async {
        let mut s = tokio::net::TcpStream::connect(&addr).await.ok()?;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).await.ok()?;
        Some(body)
    };
    let ok =
        common::wait_until(Duration::from_secs(20), || async { get().await.is_some_and(|b| b.contains("200 OK")) })
            .await;
    let body = get().await.unwrap_or_default();
    assert!(ok, "{body}");
    assert!(body.contains("\"database\":{\"ok\":true}") && body.contains("\"broker\":{\"ok\":true}"), "{body}");
    relay.terminate().await;
    sink.delete().await;
    db.drop_table().await;
}

#[test]
fn usage_errors_exit_with_code_2() {
    for (args, needle) in [
        (vec!["status", "--no-such-flag"], "--no-such-flag"),
        (vec!["--database-url", "not-a-url", "status"], "not a URL"),
        (vec!["--database-url", "ftp://x/y", "status"], "unsupported scheme"),
        (vec!["dead", "purge", "--older-than", "7x"], "7x"),
        (vec!["purge-published", "--older-than", "1d", "--batch", "0"], "--batch"),
        (vec!["dead", "show", "not-a-uuid"], "not-a-uuid"),
        (vec!["relay", "--claim-mode", "sometimes"], "sometimes"),
    ] {
        let out = run(&args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_servers_are_named_with_their_address() {
    let out = run(&["status"], &[("DATABASE_URL", "postgres://postgres@127.0.0.1:1/test")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot reach the database at postgres://postgres@127.0.0.1:1/test"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("panicked"));

    let out = run(&["status"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("DATABASE_URL"), "{}", stderr(&out));

    let Some(db) = Db::new().await else { return };
    let env = env_of(&db);
    let mut env = refs(&env);
    env.push(("NATS_URL", "nats://127.0.0.1:1"));
    let out = run(&["relay", "--bus", "nats"], &env);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("NATS at nats://127.0.0.1:1"), "{}", stderr(&out));
    let out = run(&["relay", "--bus", "redis", "--redis-url", "redis://127.0.0.1:1"], &env);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("Redis at redis://127.0.0.1:1"), "{}", stderr(&out));
    let out = run(&["relay", "--batch-size", "0"], &env);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("batch"), "{}", stderr(&out));
    db.drop_table().await;
}

#[test]
fn transaction_claims_need_postgres() {
    let dir = std::env::temp_dir().join(format!("outbox-cli-{}", outbox::testkit::unique_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("outbox.db").display());
    let out = run(&["relay", "--claim-mode", "transaction"], &[("DATABASE_URL", &url)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("`store.claim_mode`") && stderr(&out).contains("Postgres-only"), "{}", stderr(&out));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_says_to_run_migrate() {
    let out = run(&["--table", "never_migrated_table", "status"], &[("DATABASE_URL", &common::pg_url())]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("migration"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_beat_environment_which_beats_the_config_file() {
    let Some(db) = Db::new().await else { return };
    let dir = std::env::temp_dir().join(format!("outbox-cli-{}", outbox::testkit::unique_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("outbox.toml");
    // The file names the real table; the environment then a missing one; the flag the real one again.
    std::fs::write(&file, format!("database_url = \"{}\"\ntable = \"{}\"\n", db.url, db.table)).unwrap();
    db.write("orders", 2, 1, 2).await;
    let config = file.to_str().unwrap();
    let from_file = run(&["--config", config, "status", "--json"], &[]);
    assert!(stdout(&from_file).contains("\"pending\": 2"), "{}", stderr(&from_file));
    let env_wins = run(&["--config", config, "status"], &[("OUTBOX_TABLE", "no_such_table_here")]);
    assert!(stderr(&env_wins).contains("no_such_table_here"), "{}", stderr(&env_wins));
    let flag_wins =
        run(&["--config", config, "--table", &db.table, "status", "--json"], &[("OUTBOX_TABLE", "no_such_table_here")]);
    assert!(stdout(&flag_wins).contains("\"pending\": 2"), "{}", stderr(&flag_wins));
    std::fs::write(&file, "relay = 3\n").unwrap();
    let bad = run(&["--config", config, "status"], &[]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("invalid config file"), "{}", stderr(&bad));
    let _ = std::fs::remove_dir_all(&dir);
    db.drop_table().await;
}
