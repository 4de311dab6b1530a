//! Relays that start together on a fresh database all create the outbox table, and on an
//! old one all upgrade it; consumers that start together all create their inbox table: on
//! Postgres, concurrent `CREATE … IF NOT EXISTS` of one name can fail on a catalog unique
//! index and concurrent upgrades race on `ADD COLUMN`. Every call must succeed and leave a
//! table that works.
#![cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]

mod common;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use outbox_core::{Lease, NewMessage, OutboxStore};
use outbox_sea_orm::inbox::{Inbox, InboxConfig, InboxMigration, Processed, migrate_inbox};
use outbox_sea_orm::schema::partition_of;
use outbox_sea_orm::{OutboxMigration, SqlStore, SqlStoreConfig, migrate};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, SqliteTransactionMode, Statement, TransactionOptions,
    TransactionTrait,
};
use sea_orm_migration::{MigrationTrait, SchemaManager};

use common::{Backend, just, make_pre_partition_table, separate_connections, unique_table};

/// Concurrent creators of one table per round, and rounds (each a new table).
const CREATORS: usize = 8;
const ROUNDS: usize = 5;
/// Keyed rows the old-shape table holds before its upgrade.
const OLD_ROWS: usize = 40;
const TTL: Duration = Duration::from_secs(30);

/// Runs one creator per connection, all released at once by a barrier: even ones call
/// `create` (the one-call migration), odd ones run `migration` in a transaction (as the
/// SeaORM migrator does on Postgres; on SQLite begun `IMMEDIATE`, which a caller's own
/// transaction there must be: see `with_ddl_lock`). Returns the errors.
async fn create_together<C, F>(dbs: &[DatabaseConnection], create: C, migration: Arc<dyn MigrationTrait>) -> Vec<String>
where
    C: Fn(DatabaseConnection) -> F + Clone + Send + 'static,
    F: Future<Output = Result<(), String>> + Send,
{
    let start = Arc::new(tokio::sync::Barrier::new(dbs.len()));
    let creators = dbs.iter().cloned().enumerate().map(|(i, db)| {
        let (create, migration, start) = (create.clone(), migration.clone(), start.clone());
        tokio::spawn(async move {
            start.wait().await;
            if i % 2 == 0 {
                return create(db).await.map_err(|e| format!("create: {e}"));
            }
            let txn = match db.get_database_backend() {
                DbBackend::Sqlite => {
                    let immediate = TransactionOptions {
                        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                        ..Default::default()
                    };
                    db.begin_with_options(immediate).await
                }
                _ => db.begin().await,
            }
            .map_err(|e| format!("begin: {e}"))?;
            migration.up(&SchemaManager::new(&txn)).await.map_err(|e| format!("up: {e}"))?;
            txn.commit().await.map_err(|e| format!("commit: {e}"))
        })
    });
    let outcomes = futures::future::join_all(creators).await;
    outcomes.into_iter().filter_map(|o| o.unwrap().err()).collect()
}

/// [`create_together`] for the outbox table of `config`.
async fn create_outbox_together(dbs: &[DatabaseConnection], config: &SqlStoreConfig) -> Vec<String> {
    let migration = OutboxMigration::new(config.table.clone()).unwrap().key_partitions(config.key_partitions);
    let config = config.clone();
    let create = move |db: DatabaseConnection| {
        let config = config.clone();
        async move { migrate(&db, &config).await.map_err(|e| e.to_string()) }
    };
    create_together(dbs, create, Arc::new(migration)).await
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

    let t = backend.quote(table);
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
        let failed = create_outbox_together(&dbs, &config).await;
        assert!(failed.is_empty(), "round {round}: {} of {CREATORS} creations failed: {failed:?}", failed.len());
        assert_table_works(backend, &dbs[0], &config, 0).await;
    }
}

/// Every relay of a deployment upgrading a table from before key partitions at once: all
/// succeed, every old row gets its key's partition, and the table then works.
async fn concurrent_upgrades_of_an_old_table_all_succeed(backend: Backend) {
    let Some(dbs) = separate_connections(backend, CREATORS).await else { return };
    for round in 0..ROUNDS {
        let config = SqlStoreConfig::default().table(unique_table());
        migrate(&dbs[0], &config).await.unwrap();
        make_pre_partition_table(&dbs[0], &config.table, OLD_ROWS, 7).await;
        let failed = create_outbox_together(&dbs, &config).await;
        assert!(failed.is_empty(), "round {round}: {} of {CREATORS} upgrades failed: {failed:?}", failed.len());

        let t = backend.quote(&config.table);
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

/// Every process of a deployment may create its inbox at startup.
async fn concurrent_creations_of_one_inbox_table_all_succeed(backend: Backend) {
    let Some(dbs) = separate_connections(backend, CREATORS).await else { return };
    for round in 0..ROUNDS {
        let config = InboxConfig::default().table(unique_table()).consumer("tests");
        let migration = InboxMigration::new(config.table.clone()).unwrap();
        let create = {
            let config = config.clone();
            move |db: DatabaseConnection| {
                let config = config.clone();
                async move { migrate_inbox(&db, &config).await.map_err(|e| e.to_string()) }
            }
        };
        let failed = create_together(&dbs, create, Arc::new(migration)).await;
        assert!(failed.is_empty(), "round {round}: {} of {CREATORS} creations failed: {failed:?}", failed.len());

        let inbox = Inbox::new(dbs[0].clone(), config).unwrap();
        let id = uuid::Uuid::now_v7().to_string();
        let done = inbox.process(&id, |_txn| Box::pin(async { Ok::<_, DbErr>(()) })).await.unwrap();
        assert_eq!(done, Processed::Done(()));
        assert!(inbox.contains(&id).await.unwrap(), "round {round}: the id is recorded");
    }
}

per_backend!(
    just =>
    concurrent_creations_of_one_table_all_succeed,
    concurrent_upgrades_of_an_old_table_all_succeed,
    concurrent_creations_of_one_inbox_table_all_succeed,
);
