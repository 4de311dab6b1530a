//! On a million-row Postgres table, the claim queries use their indexes.

use outbox_core::testkit::{test_url, unique_suffix, unreachable_server};
use sea_orm::{Database, Statement};

use std::time::Duration;

use outbox_core::message::now_millis;
use outbox_core::{Lease, MessageId};
use sea_orm::ConnectionTrait;

use super::SqlStore;
use super::claim::SWEEP_WINDOW;
use super::pick::Pick;
use crate::SqlStoreConfig;
use crate::partition::claim::Read;
use crate::sql::{Query, Tid};

const VAR: &str = "OUTBOX_TEST_POSTGRES_URL";
const ROWS: i64 = 1_000_000;

async fn explain(store: &SqlStore, q: Query) -> String {
    let mut stmt: Statement = q.build();
    stmt.sql = format!("EXPLAIN {}", stmt.sql);
    let rows = store.db.query_all_raw(stmt).await.unwrap();
    rows.iter().map(|r| r.try_get_by_index::<String>(0).unwrap()).collect::<Vec<_>>().join("\n")
}

/// On a million-row table, neither claim query reads the whole table, and sweeps start
/// their scan at the window's start, a pending row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_queries_use_indexes_on_a_large_table() {
    let url = test_url(VAR, "postgres://postgres@127.0.0.1:5432/test");
    let db = match Database::connect(url.as_str()).await {
        Ok(db) => db,
        Err(e) => return unreachable_server(VAR, &url, e).unwrap_or(()),
    };
    let table = format!("outbox_explain_{}", unique_suffix());
    let config = SqlStoreConfig::default().table(table.clone());
    crate::migrate(&db, &config).await.unwrap();
    let store = SqlStore::new(db, config).unwrap();

    // 10 % keyless, the rest over 5,000 keys; 1 % dead letters.
    let fill = format!(
        "INSERT INTO {t} (id, topic, msg_key, partition_no, payload, headers, status, attempts, created_at, \
         available_at) \
         SELECT gen_random_uuid(), 'bench', CASE WHEN g % 10 = 0 THEN NULL ELSE 'key-' || (g % 5000) END, \
         CASE WHEN g % 10 = 0 THEN NULL ELSE g % 5000 % 256 END, \
         '\\x00'::bytea, '{{}}', CASE WHEN g % 100 = 0 THEN 2 ELSE 0 END, 0, {now} - {ROWS} + g, {now} - {ROWS} + g \
         FROM generate_series(1, {ROWS}) AS g",
        t = store.table,
        now = now_millis()
    );
    store.db.execute_unprepared(&fill).await.unwrap();
    store.db.execute_unprepared(&format!("ANALYZE {}", store.table)).await.unwrap();

    let lease = Lease::new(Duration::from_secs(30));
    let now = now_millis();
    let until = now + 30_000;
    let due = store.claim_update(
        Pick::Due { created_before: now - 2_000, limit: 500, window: Some(SWEEP_WINDOW) },
        &lease,
        now,
        until,
    );
    let ids: Vec<MessageId> = (0..256).map(|_| MessageId::new()).collect();
    let by_id = store.claim_update(Pick::Ids(&ids), &lease, now, until);
    let window = Some(SWEEP_WINDOW);
    let held_due = store.held_claim_query(
        Pick::Due { created_before: now, limit: 500, window },
        now,
        &[Tid { block: 0, offset: 1 }],
    );
    let held_ids = store.held_claim_query(Pick::Ids(&ids), now, &[]);
    let seqs: Vec<i64> = (1..=1_000).collect();
    let runs = Pick::Runs { seqs: &seqs, created_before: now, unpartitioned: false };
    let held_runs = store.held_claim_query(runs, now, &[]);
    let all: Vec<i32> = (0..256).collect();
    let [oldest] = <[Query; 1]>::try_from(store.candidate_reads(&all, Read::Oldest(4_000), now, now)).unwrap();
    let [each] = <[Query; 1]>::try_from(store.candidate_reads(&all[..64], Read::EachPartition(63), now, now)).unwrap();
    let plans = [
        ("candidate read, oldest first", explain(&store, oldest).await),
        ("candidate read, each partition", explain(&store, each).await),
        ("leased claim_due", explain(&store, due).await),
        ("leased claim_ids", explain(&store, by_id).await),
        ("held claim_due", explain(&store, held_due).await),
        ("held claim_ids", explain(&store, held_ids).await),
        ("held claim of runs", explain(&store, held_runs).await),
    ];

    store.db.execute_unprepared(&format!("DROP TABLE {}", store.table)).await.unwrap();
    for (name, plan) in plans {
        // (The lease table is small enough that a scan of it is the cheapest plan.)
        assert!(!plan.contains(&format!("Seq Scan on {table} ")), "{name} scans the whole table:\n{plan}");
        if name.starts_with("candidate read") {
            // In `seq` order through an index of it (here, most rows pending, the primary
            // key does as well as the index of pending rows), with no sort; per partition
            // through the partitions' index.
            if name.ends_with("first") {
                assert!(!plan.contains("Sort"), "{name} sorts:\n{plan}");
                assert!(plan.contains("_pkey") || plan.contains("status_seq_idx"), "{name}:\n{plan}");
            } else {
                assert!(plan.contains(&format!("{table}_part_idx")), "{name} does not read part_idx:\n{plan}");
            }
            continue;
        }
        assert!(plan.contains("SKIP LOCKED") || plan.contains("LockRows"), "{name}:\n{plan}");
        if name.ends_with("claim_due") {
            // Deleted rows not yet vacuumed lie below the oldest pending one.
            assert!(plan.contains("(seq >= "), "{name} does not start at the window's start:\n{plan}");
        }
        if name.ends_with("runs") {
            // Each row's probe for a dead row earlier in its key reads the index of dead rows.
            assert!(plan.contains(&format!("{table}_key_dead_idx")), "{name} probes past the dead rows:\n{plan}");
        }
    }
}
