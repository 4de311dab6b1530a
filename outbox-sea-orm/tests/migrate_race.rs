//! Relays that start together on a fresh database all create the outbox table, and on an
//! old one all upgrade it: on Postgres, concurrent `CREATE … IF NOT EXISTS` of one name can
//! fail on a catalog unique index and concurrent upgrades race on `ADD COLUMN`. Every call
//! must succeed and leave a table that works.
#![cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]

mod common;

use std::sync::Arc;
use std::time::Duration;

use outbox_core::{Lease, NewMessage, OutboxStore};
use outbox_sea_orm::schema::partition_of;
use outbox_sea_orm::{OutboxMigration, SqlStore, SqlStoreConfig, migrate};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement, TransactionTrait};
use sea_orm_migration::{MigrationTrait, SchemaManager};
use uuid::Uuid;

use common::{Backend, separate_connections, unique_table};

/// Concurrent creators of one table per round, and rounds (each a new table).
const CREATORS: usize = 8;
const ROUNDS: usize = 5;
/// Keyed rows the old-shape table holds before its upgrade.
const OLD_ROWS: usize = 40;
const TTL: Duration = Duration::from_secs(30);

/// Runs one creator per connection, all released at once by a barrier: even ones call
/// `migrate`, odd ones run the SeaORM migration in a transaction (as the migrator does on
/// Postgres). Returns the errors.
async fn create_together(dbs: &[DatabaseConnection], config: &SqlStoreConfig) -> Vec<String> {
    let start = Arc::new(tokio::sync::Barrier::new(dbs.len()));
    let creators = dbs.iter().cloned().enumerate().map(|(i, db)| {
        let (config, start) = (config.clone(), start.clone());
        tokio::spawn(async move {
            start.wait().await;
            if i % 2 == 0 {
                return migrate(&db, &config).await.map_err(|e| format!("migrate: {e}"));
            }
            let migration = OutboxMigration::new(config.table.clone()).unwrap().key_partitions(config.key_partitions);
            let txn = db.begin().await.map_err(|e| format!("begin: {e}"))?;
            migration.up(&SchemaManager::new(&txn)).await.map_err(|e| format!("up: {e}"))?;
            txn.commit().await.map_err(|e| format!("commit: {e}"))
        })
    });
    let outcomes = futures::future::join_all(creators).await;
    outcomes.into_iter().filter_map(|o| o.unwrap().err()).collect()
}

fn quoted(backend: Backend, name: &str) -> String {
    if backend == Backend::MySql { format!("`{name}`") } else { format!("\"{name}\"") }
}

async fn query(db: &DatabaseConnection, sql: String) -> Vec<sea_orm::QueryResult> {
    db.query_all_raw(Statement::from_string(db.get_database_backend(), sql)).await.unwrap()
}

/// A store on the table enqueues a keyed and a keyless message, gives the keyed one its
/// partition, counts both beside the `before` pending ones, and claims both by id.
async fn assert_table_works(backend: Backend, db: &DatabaseConnection, config: &SqlStoreConfig, before: u64) {
    let store = SqlStore::new(db.clone(), config.clone()).unwrap();
    let table = &config.table;
    let messages = vec![NewMessage::new("race", "keyed").key("race-key"), NewMessage::new("race", "keyless")];
    let ids = store.enqueue(messages).await.unwrap_or_else(|e| panic!("{table}: enqueue: {e}"));
    assert_eq!(store.stats().await.unwrap().pending, before + 2, "{table}");

    let t = quoted(backend, table);
    let rows = query(db, format!("SELECT partition_no FROM {t} WHERE msg_key = 'race-key'")).await;
    let partition: Option<i32> = rows[0].try_get_by_index(0).unwrap();
    assert_eq!(partition, Some(partition_of("race-key", config.key_partitions)), "{table}");

    let claimed = store.claim_ids(&ids, &Lease::new(TTL)).await.unwrap();
    assert_eq!(claimed.len(), 2, "{table}: both new messages are claimable");
}

async fn concurrent_creations_of_one_table_all_succeed(backend: Backend) {
    let Some(dbs) = separate_connections(backend, CREATORS).await else { return };
    for round in 0..ROUNDS {
        let config = SqlStoreConfig::default().table(unique_table());
        let failed = create_together(&dbs, &config).await;
        assert!(failed.is_empty(), "round {round}: {} of {CREATORS} creations failed: {failed:?}", failed.len());
        assert_table_works(backend, &dbs[0], &config, 0).await;
    }
}

/// Turns a freshly migrated table into one made before key partitions (no `partition_no`,
/// no partition index, no lease tables) holding [`OLD_ROWS`] pending keyed rows.
async fn make_old_table(backend: Backend, db: &DatabaseConnection, config: &SqlStoreConfig) {
    migrate(db, config).await.unwrap();
    let table = &config.table;
    let t = quoted(backend, table);
    for ddl in [
        format!("DROP TABLE {}", quoted(backend, &format!("{table}_partitions"))),
        format!("DROP TABLE {}", quoted(backend, &format!("{table}_relays"))),
        if backend == Backend::MySql {
            format!("DROP INDEX `{table}_part_idx` ON {t}")
        } else {
            format!("DROP INDEX {}", quoted(backend, &format!("{table}_part_idx")))
        },
        format!("ALTER TABLE {t} DROP COLUMN partition_no"),
    ] {
        db.execute_unprepared(&ddl).await.unwrap();
    }
    // Rows as the old enqueue wrote them.
    let uuid = |id: Uuid| if backend == Backend::Postgres { format!("'{id}'") } else { format!("X'{}'", id.simple()) };
    let payload = if backend == Backend::Postgres { "convert_to('old', 'UTF8')" } else { "X'6f6c64'" };
    let rows: Vec<String> = (0..OLD_ROWS)
        .map(|i| format!("({}, 'old', 'key-{}', {payload}, '{{}}', 0, 0, 0, 0)", uuid(Uuid::now_v7()), i % 7))
        .collect();
    db.execute_unprepared(&format!(
        "INSERT INTO {t} (id, topic, msg_key, payload, headers, status, attempts, created_at, available_at) VALUES {}",
        rows.join(", ")
    ))
    .await
    .unwrap();
}

/// Every relay of a deployment upgrading a table from before key partitions at once: all
/// succeed, every old row gets its key's partition, and the table then works.
async fn concurrent_upgrades_of_an_old_table_all_succeed(backend: Backend) {
    let Some(dbs) = separate_connections(backend, CREATORS).await else { return };
    for round in 0..ROUNDS {
        let config = SqlStoreConfig::default().table(unique_table());
        make_old_table(backend, &dbs[0], &config).await;
        let failed = create_together(&dbs, &config).await;
        assert!(failed.is_empty(), "round {round}: {} of {CREATORS} upgrades failed: {failed:?}", failed.len());

        let t = quoted(backend, &config.table);
        let found = query(&dbs[0], format!("SELECT msg_key, partition_no FROM {t}")).await;
        assert_eq!(found.len(), OLD_ROWS);
        for r in &found {
            let key: String = r.try_get_by_index(0).unwrap();
            let partition: Option<i32> = r.try_get_by_index(1).unwrap();
            assert_eq!(partition, Some(partition_of(&key, config.key_partitions)), "round {round}: {key}");
        }
        assert_table_works(backend, &dbs[0], &config, OLD_ROWS as u64).await;
    }
}

macro_rules! backend_cases {
    ($($case:ident),* $(,)?) => {
        backend_cases!(@backend postgres, "postgres", Postgres, $($case),*);
        backend_cases!(@backend mysql, "mysql", MySql, $($case),*);
        backend_cases!(@backend sqlite, "sqlite", Sqlite, $($case),*);
    };
    (@backend $module:ident, $feature:literal, $backend:ident, $($case:ident),*) => {
        #[cfg(feature = $feature)]
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Backend::$backend).await;
                }
            )*
        }
    };
}

backend_cases!(concurrent_creations_of_one_table_all_succeed, concurrent_upgrades_of_an_old_table_all_succeed);
