//! Creates the outbox table, its indexes and its partition lease tables, as a SeaORM
//! migration or in one call; upgrades a table made before key partitions in place.

use async_trait::async_trait;
use futures::future::BoxFuture;
use outbox_core::Result;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, SqliteTransactionMode, Statement,
    TransactionOptions, TransactionTrait,
};
use sea_orm_migration::{MigrationName, MigrationTrait, MigratorTrait, SchemaManager, SchemaManagerConnection};

use crate::config::{DEFAULT_KEY_PARTITIONS, DEFAULT_TABLE, MAX_TABLE_LEN, SqlStoreConfig, check_identifier};
use crate::error::from_db_err;
use crate::partition::{leases_table, partition_of, relays_table};
use crate::sql::{Dialect, Query};

/// Rows given their partition per statement when upgrading a table.
const BACKFILL_BATCH: i64 = 5_000;

/// The lock prefix of the outbox table's DDL (see [`with_ddl_lock`]).
pub(crate) const OUTBOX_DDL_LOCK: &str = "outbox-ddl:";

/// How long a MySQL creator waits for another one's DDL lock: longer than any upgrade.
const MYSQL_DDL_LOCK_WAIT_SECS: i64 = 3600;

/// A migration that creates (`up`) or drops (`down`) one outbox table. Add it to your own
/// `Migrator` so the outbox table is versioned with the rest of your schema:
///
/// ```
/// use outbox_sea_orm::OutboxMigration;
/// use sea_orm_migration::{MigrationTrait, MigratorTrait};
///
/// struct Migrator;
///
/// impl MigratorTrait for Migrator {
///     fn migrations() -> Vec<Box<dyn MigrationTrait>> {
///         vec![
///             // your migrations…
///             Box::new(OutboxMigration::default()),
///         ]
///     }
/// }
/// # assert_eq!(Migrator::migrations().len(), 1);
/// ```
///
/// `up` is idempotent (`CREATE … IF NOT EXISTS`), so it also adopts a table created earlier by
/// [`migrate`]. On a table made before key partitions it adds the `partition_no` column,
/// its index and the lease tables, and gives every pending and dead keyed row its
/// partition, in batches (set the count with [`key_partitions`](Self::key_partitions) if
/// the store's is not the default). Several processes may run it (or [`migrate`]) at once:
/// the creators of one table take turns on a lock, so each finds the table either missing
/// or complete (see [`migrate`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxMigration {
    table: String,
    name: String,
    key_partitions: u16,
}

impl OutboxMigration {
    /// A migration for `table`; it must be a plain identifier (see
    /// [`SqlStoreConfig::table`]).
    pub fn new(table: impl Into<String>) -> Result<Self> {
        let table = table.into();
        check_identifier("store.table", &table, MAX_TABLE_LEN)?;
        Ok(Self {
            name: format!("m20250601_000001_create_outbox_table_{table}"),
            table,
            key_partitions: DEFAULT_KEY_PARTITIONS,
        })
    }

    /// The partition count existing rows are given when a table is upgraded: the store's
    /// [`SqlStoreConfig::key_partitions`] (`0`: none). Default 256.
    pub fn key_partitions(mut self, partitions: u16) -> Self {
        self.key_partitions = partitions;
        self
    }

    /// The table it creates.
    pub fn table(&self) -> &str {
        &self.table
    }
}

impl Default for OutboxMigration {
    /// The migration for [`DEFAULT_TABLE`].
    fn default() -> Self {
        Self {
            table: DEFAULT_TABLE.to_owned(),
            name: format!("m20250601_000001_create_outbox_table_{DEFAULT_TABLE}"),
            key_partitions: DEFAULT_KEY_PARTITIONS,
        }
    }
}

impl MigrationName for OutboxMigration {
    fn name(&self) -> &str {
        &self.name
    }
}

#[async_trait]
impl MigrationTrait for OutboxMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let dialect = Dialect::of(manager.get_database_backend()).map_err(|e| DbErr::Migration(e.to_string()))?;
        let (table, partitions) = (self.table.clone(), self.key_partitions);
        let lock = format!("{OUTBOX_DDL_LOCK}{table}");
        with_ddl_lock(manager.get_connection(), dialect, &lock, move |txn| {
            Box::pin(async move {
                for ddl in create_statements(dialect, &table) {
                    txn.execute_unprepared(&ddl).await?;
                }
                upgrade(txn, dialect, &table).await?;
                // Partitioning off: every claim checks each row's key, whatever the partitions.
                if partitions == 0 {
                    return Ok(());
                }
                check_partition_count(txn, dialect, &table, partitions).await?;
                backfill_partitions(txn, dialect, &table, partitions).await
            })
        })
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let dialect = Dialect::of(manager.get_database_backend()).map_err(|e| DbErr::Migration(e.to_string()))?;
        for table in [leases_table(&self.table), relays_table(&self.table), self.table.clone()] {
            let sql = format!("DROP TABLE IF EXISTS {}", dialect.quote(&table));
            manager.get_connection().execute_unprepared(&sql).await?;
        }
        Ok(())
    }
}

/// A migrator with just the default outbox table, for applications that do not use SeaORM
/// migrations themselves. It records itself in its own table, `outbox_seaql_migrations`,
/// so it never conflicts with an application's `seaql_migrations`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(OutboxMigration::default())]
    }

    fn migration_table_name() -> sea_orm::DynIden {
        use sea_orm::sea_query::IntoIden;
        "outbox_seaql_migrations".into_iden()
    }
}

/// Creates the table of `config` and its indexes if they are missing (idempotent, unversioned):
/// the quickest start, and what `outbox migrate` runs. Upgrades a table made before key
/// partitions as [`OutboxMigration`] does.
///
/// Relays starting together may all call it: the whole creation or upgrade runs under a lock
/// on the table's name, so the others wait and then find it complete. Postgres takes
/// `pg_advisory_xact_lock` on a key derived from the name (FNV-1a), since concurrent
/// `CREATE … IF NOT EXISTS` there can fail on a catalog unique index; MySQL takes `GET_LOCK`
/// on the name; SQLite takes its write lock (`BEGIN IMMEDIATE`). Without them, concurrent
/// upgrades fail adding the same column.
///
/// ```no_run
/// # async fn run() -> outbox_core::Result<()> {
/// use outbox_sea_orm::{SqlStoreConfig, migrate};
///
/// let db = sea_orm::Database::connect("postgres://postgres@127.0.0.1/app").await.unwrap();
/// migrate(&db, &SqlStoreConfig::default()).await?;
/// # Ok(()) }
/// ```
pub async fn migrate(db: &DatabaseConnection, config: &SqlStoreConfig) -> Result<()> {
    config.validate()?;
    let migration = OutboxMigration::new(config.table.clone())?.key_partitions(config.key_partitions);
    let backend = db.get_database_backend();
    migration.up(&SchemaManager::new(db)).await.map_err(|e| from_db_err(backend, &config.table, e))
}

/// Runs `ddl` for one table so that processes doing it at once take turns, each in a
/// transaction that first takes the lock named `lock` (a prefix such as
/// [`OUTBOX_DDL_LOCK`] and the table):
///
/// - Postgres: `pg_advisory_xact_lock` on [`ddl_lock_key`]. Inside a caller's transaction
///   (the SeaORM migrator's) this is a savepoint and the lock lasts until that commits.
/// - MySQL: `GET_LOCK` on `lock`, released when `ddl` ends. Each DDL statement commits
///   implicitly, so the transaction only keeps the lock's session; a caller's transaction
///   is used as it is, since DDL would end a savepoint.
/// - SQLite: `BEGIN IMMEDIATE`, which takes the write lock before the first check. In a
///   caller's transaction, only a savepoint: the caller must have begun it `IMMEDIATE` (a
///   deferred one that has read cannot take the write lock after another writer committed,
///   and fails with `SQLITE_BUSY`). SeaORM's migrator uses no transaction on SQLite.
pub(crate) async fn with_ddl_lock<F>(
    conn: &SchemaManagerConnection<'_>,
    dialect: Dialect,
    lock: &str,
    ddl: F,
) -> Result<(), DbErr>
where
    F: for<'c> FnOnce(&'c DatabaseTransaction) -> BoxFuture<'c, Result<(), DbErr>> + Send,
{
    match dialect {
        Dialect::Postgres => {
            let txn = conn.begin().await?;
            txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({})", ddl_lock_key(lock))).await?;
            ddl(&txn).await?;
            txn.commit().await
        }
        Dialect::MySql => match conn {
            SchemaManagerConnection::Connection(db) => {
                let txn = db.begin().await?;
                with_mysql_lock(&txn, lock, ddl).await?;
                txn.commit().await
            }
            SchemaManagerConnection::Transaction(txn) => with_mysql_lock(txn, lock, ddl).await,
            SchemaManagerConnection::OwnedTransaction(txn) => with_mysql_lock(txn, lock, ddl).await,
        },
        Dialect::Sqlite => {
            let txn = match conn {
                SchemaManagerConnection::Connection(db) => {
                    let immediate = TransactionOptions {
                        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                        ..Default::default()
                    };
                    db.begin_with_options(immediate).await?
                }
                _ => conn.begin().await?,
            };
            ddl(&txn).await?;
            txn.commit().await
        }
    }
}

/// Runs `ddl` on `txn`'s connection holding the MySQL user lock `lock`.
async fn with_mysql_lock<F>(txn: &DatabaseTransaction, lock: &str, ddl: F) -> Result<(), DbErr>
where
    F: for<'c> FnOnce(&'c DatabaseTransaction) -> BoxFuture<'c, Result<(), DbErr>> + Send,
{
    // Lock names are at most 64 characters; a shared prefix only makes two tables take turns.
    let name = &lock[..lock.len().min(64)];
    let get = Statement::from_sql_and_values(
        DbBackend::MySql,
        "SELECT GET_LOCK(?, ?)",
        [name.into(), MYSQL_DDL_LOCK_WAIT_SECS.into()],
    );
    let got: Option<i64> = match txn.query_one_raw(get).await? {
        Some(row) => row.try_get_by_index(0)?,
        None => None,
    };
    if got != Some(1) {
        return Err(DbErr::Migration(format!("waited {MYSQL_DDL_LOCK_WAIT_SECS} s for the lock {name} in vain")));
    }
    let done = ddl(txn).await;
    // The lock belongs to the session, which outlives the transaction in the pool.
    let release = Statement::from_sql_and_values(DbBackend::MySql, "SELECT RELEASE_LOCK(?)", [name.into()]);
    let released = txn.query_one_raw(release).await;
    done?;
    released.map(|_| ())
}

/// The Postgres advisory lock key for `lock`: FNV-1a (64 bit) of the name, so it is the same
/// in every process and unlikely to meet an application's own keys.
pub(crate) fn ddl_lock_key(lock: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in lock.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

/// Brings a table up to date: the `partition_no` column and its index (tables made before
/// key partitions lack them), and the lease tables.
async fn upgrade(conn: &impl ConnectionTrait, dialect: Dialect, table: &str) -> Result<(), DbErr> {
    let t = dialect.quote(table);
    let part_idx = dialect.quote(&format!("{table}_part_idx"));
    if !has_column(conn, dialect, table, "partition_no").await? {
        let ty = if dialect == Dialect::MySql { "INT" } else { "INTEGER" };
        conn.execute_unprepared(&format!("ALTER TABLE {t} ADD COLUMN partition_no {ty} NULL")).await?;
    }
    // A sweep reads each held partition's pending rows in `seq` order; rows without a
    // partition (keyless ones) are swept through the same index.
    let index = format!("{part_idx} ON {t} (partition_no, status, seq)");
    match dialect {
        Dialect::Postgres => {
            conn.execute_unprepared(&format!("CREATE INDEX IF NOT EXISTS {index}")).await?;
            // A keyed claim of planned runs checks each row for a dead row earlier in its key:
            // an index of the dead rows alone makes that probe nearly free. (MySQL and SQLite
            // have status in the key index.)
            let dead_idx = dialect.quote(&format!("{table}_key_dead_idx"));
            conn.execute_unprepared(&format!(
                "CREATE INDEX IF NOT EXISTS {dead_idx} ON {t} (msg_key, seq) WHERE status = 2 AND msg_key IS NOT NULL"
            ))
            .await?;
        }
        Dialect::Sqlite => {
            conn.execute_unprepared(&format!("CREATE INDEX IF NOT EXISTS {index}")).await?;
        }
        Dialect::MySql => {
            let q = format!(
                "SELECT 1 FROM information_schema.statistics WHERE table_schema = DATABASE() \
                 AND table_name = '{table}' AND index_name = '{table}_part_idx'"
            );
            if conn.query_one_raw(sea_orm::Statement::from_string(dialect.backend(), q)).await?.is_none() {
                conn.execute_unprepared(&format!("CREATE INDEX {index}")).await?;
            }
        }
    }
    for ddl in lease_statements(dialect, table) {
        conn.execute_unprepared(&ddl).await?;
    }
    Ok(())
}

async fn has_column(conn: &impl ConnectionTrait, dialect: Dialect, table: &str, column: &str) -> Result<bool, DbErr> {
    // `table` and `column` are validated plain identifiers.
    let q = match dialect {
        Dialect::Postgres => format!(
            "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() \
             AND table_name = '{table}' AND column_name = '{column}'"
        ),
        Dialect::MySql => format!(
            "SELECT 1 FROM information_schema.columns WHERE table_schema = DATABASE() \
             AND table_name = '{table}' AND column_name = '{column}'"
        ),
        Dialect::Sqlite => format!("SELECT 1 FROM pragma_table_info('{table}') WHERE name = '{column}'"),
    };
    Ok(conn.query_one_raw(sea_orm::Statement::from_string(dialect.backend(), q)).await?.is_some())
}

/// Refuses a partition count other than the one the table's partition leases were made for
/// while keyed rows wait under them: a key would sit in two partitions, and claims, which
/// trust the stored partition, would not keep its order. With no such rows, the leases are
/// dropped, for the stores to make them again under the new count.
async fn check_partition_count(
    conn: &impl ConnectionTrait,
    dialect: Dialect,
    table: &str,
    partitions: u16,
) -> Result<(), DbErr> {
    let leases = dialect.quote(&leases_table(table));
    let Some(made_for) = partitions_made_for(conn, dialect, &leases).await? else { return Ok(()) };
    if made_for == i64::from(partitions) {
        return Ok(());
    }
    let t = dialect.quote(table);
    let waiting = format!("SELECT 1 FROM {t} WHERE partition_no IS NOT NULL AND status IN (0, 2) LIMIT 1");
    if conn.query_one_raw(sea_orm::Statement::from_string(dialect.backend(), waiting)).await?.is_some() {
        let error = partition_count_error(table, partitions, made_for);
        return Err(DbErr::Migration(format!("store.key_partitions {error}")));
    }
    conn.execute_unprepared(&format!("DELETE FROM {leases}")).await?;
    Ok(())
}

/// The partition count the lease table `leases` (quoted) was made for (its highest
/// partition, plus one); `None` when it is empty.
pub(crate) async fn partitions_made_for(
    conn: &impl ConnectionTrait,
    dialect: Dialect,
    leases: &str,
) -> Result<Option<i64>, DbErr> {
    let q = format!("SELECT MAX(partition_no) FROM {leases}");
    let row = conn.query_one_raw(sea_orm::Statement::from_string(dialect.backend(), q)).await?;
    let max: Option<i64> = match row {
        Some(r) => r.try_get_by_index::<Option<i32>>(0).map(|m| m.map(i64::from)).or_else(|_| r.try_get_by_index(0))?,
        None => None,
    };
    Ok(max.map(|m| m + 1))
}

/// Why a store or migration with `partitions` refuses a table made for `made_for`: the text
/// after `store.key_partitions`.
pub(crate) fn partition_count_error(table: &str, partitions: u16, made_for: i64) -> String {
    format!(
        "is {partitions}, but the partition leases of `{table}` were made for {made_for} partitions and \
         keyed messages may wait under them: keep key_partitions = {made_for}, or drain the outbox \
         (publish, replay or purge its keyed messages) and migrate with the new count before starting relays"
    )
}

/// Gives pending and dead keyed rows without a partition theirs (rows of a table made
/// before key partitions), in batches.
async fn backfill_partitions(
    conn: &impl ConnectionTrait,
    dialect: Dialect,
    table: &str,
    partitions: u16,
) -> Result<(), DbErr> {
    let t = dialect.quote(table);
    let mut total = 0u64;
    loop {
        let mut q = Query::new(dialect);
        q.push("SELECT seq, msg_key FROM ")
            .push(&t)
            .push(" WHERE msg_key IS NOT NULL AND partition_no IS NULL AND status IN (0, 2) ORDER BY seq LIMIT ")
            .bind(BACKFILL_BATCH);
        let rows = conn.query_all_raw(q.build()).await?;
        if rows.is_empty() {
            break;
        }
        let mut by_partition: std::collections::BTreeMap<i32, Vec<i64>> = std::collections::BTreeMap::new();
        for row in &rows {
            let seq: i64 = row.try_get_by_index(0)?;
            let key: String = row.try_get_by_index(1)?;
            by_partition.entry(partition_of(&key, partitions)).or_default().push(seq);
        }
        for (partition, seqs) in by_partition {
            let mut q = Query::new(dialect);
            q.push("UPDATE ").push(&t).push(" SET partition_no = ").bind(partition).push(" WHERE ").i64_in("seq", seqs);
            conn.execute_raw(q.build()).await?;
        }
        total += rows.len() as u64;
    }
    if total > 0 {
        tracing::info!(table, rows = total, partitions, "gave existing keyed rows their partition");
    }
    Ok(())
}

/// The lease tables of `table`: a row per partition, and a row per live relay.
fn lease_statements(dialect: Dialect, table: &str) -> Vec<String> {
    let leases = dialect.quote(&leases_table(table));
    let relays = dialect.quote(&relays_table(table));
    let (owner, engine) = match dialect {
        Dialect::Postgres => ("UUID", ""),
        Dialect::MySql => ("BINARY(16)", " ENGINE = InnoDB"),
        Dialect::Sqlite => ("BLOB", ""),
    };
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {leases} (
                partition_no INTEGER NOT NULL PRIMARY KEY,
                owner {owner} NULL,
                epoch BIGINT NOT NULL DEFAULT 0,
                lease_until BIGINT NOT NULL DEFAULT 0
            ){engine}"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {relays} (
                owner {owner} NOT NULL PRIMARY KEY,
                alive_until BIGINT NOT NULL
            ){engine}"
        ),
    ]
}

/// The DDL for `table`, one statement per string.
pub(crate) fn create_statements(dialect: Dialect, table: &str) -> Vec<String> {
    let t = dialect.quote(table);
    let status_idx = dialect.quote(&format!("{table}_status_seq_idx"));
    let key_idx = dialect.quote(&format!("{table}_key_head_idx"));
    let id_key = dialect.quote(&format!("{table}_id_key"));
    let part_idx = dialect.quote(&format!("{table}_part_idx"));
    match dialect {
        Dialect::Postgres => vec![
            // fillfactor leaves room on each page so claims (which touch no indexed column)
            // are HOT updates.
            format!(
                "CREATE TABLE IF NOT EXISTS {t} (
                    seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                    id UUID NOT NULL,
                    topic VARCHAR(255) NOT NULL,
                    msg_key VARCHAR(255) NULL,
                    partition_no INTEGER NULL,
                    payload BYTEA NOT NULL,
                    headers TEXT NOT NULL,
                    status SMALLINT NOT NULL DEFAULT 0,
                    attempts INTEGER NOT NULL DEFAULT 0,
                    last_error TEXT NULL,
                    created_at BIGINT NOT NULL,
                    available_at BIGINT NOT NULL,
                    claimed_until BIGINT NULL,
                    claim_token UUID NULL,
                    finished_at BIGINT NULL,
                    CONSTRAINT {id_key} UNIQUE (id)
                ) WITH (fillfactor = 90)"
            ),
            format!("CREATE INDEX IF NOT EXISTS {status_idx} ON {t} (status, seq)"),
            // Only unfinished rows can block a key, so the head-of-key index skips the rest.
            format!(
                "CREATE INDEX IF NOT EXISTS {key_idx} ON {t} (msg_key, seq) \
                 WHERE status IN (0, 2) AND msg_key IS NOT NULL"
            ),
        ],
        // MySQL has no CREATE INDEX IF NOT EXISTS, so the indexes live in CREATE TABLE.
        // Binary collations: keys and topics compare byte for byte, as in every other store.
        Dialect::MySql => vec![format!(
            "CREATE TABLE IF NOT EXISTS {t} (
                seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
                id BINARY(16) NOT NULL,
                topic VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
                msg_key VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
                partition_no INT NULL,
                payload LONGBLOB NOT NULL,
                headers MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
                status SMALLINT NOT NULL DEFAULT 0,
                attempts INT NOT NULL DEFAULT 0,
                last_error MEDIUMTEXT CHARACTER SET utf8mb4 NULL,
                created_at BIGINT NOT NULL,
                available_at BIGINT NOT NULL,
                claimed_until BIGINT NULL,
                claim_token BINARY(16) NULL,
                finished_at BIGINT NULL,
                UNIQUE KEY {id_key} (id),
                KEY {status_idx} (status, seq),
                KEY {key_idx} (msg_key, status, seq),
                KEY {part_idx} (partition_no, status, seq)
            ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4"
        )],
        // AUTOINCREMENT: a deleted last row never gives its seq to a newer message.
        Dialect::Sqlite => vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {t} (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    id BLOB NOT NULL,
                    topic TEXT NOT NULL,
                    msg_key TEXT NULL,
                    partition_no INTEGER NULL,
                    payload BLOB NOT NULL,
                    headers TEXT NOT NULL,
                    status INTEGER NOT NULL DEFAULT 0,
                    attempts INTEGER NOT NULL DEFAULT 0,
                    last_error TEXT NULL,
                    created_at INTEGER NOT NULL,
                    available_at INTEGER NOT NULL,
                    claimed_until INTEGER NULL,
                    claim_token BLOB NULL,
                    finished_at INTEGER NULL,
                    CONSTRAINT {id_key} UNIQUE (id)
                )"
            ),
            format!("CREATE INDEX IF NOT EXISTS {status_idx} ON {t} (status, seq)"),
            format!("CREATE INDEX IF NOT EXISTS {key_idx} ON {t} (msg_key, status, seq)"),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_names_carry_the_table() {
        let m = OutboxMigration::new("orders_outbox").unwrap();
        assert_eq!(m.name(), "m20250601_000001_create_outbox_table_orders_outbox");
        assert_eq!(OutboxMigration::default().table(), DEFAULT_TABLE);
        assert!(OutboxMigration::new("bad name").is_err());
    }

    #[test]
    fn every_dialect_indexes_status_and_key() {
        for d in [Dialect::Postgres, Dialect::MySql, Dialect::Sqlite] {
            let ddl = create_statements(d, "t").join("\n");
            assert!(ddl.contains("t_status_seq_idx") && ddl.contains("t_key_head_idx"), "{d:?}");
        }
    }

    #[test]
    fn lock_keys_are_fnv1a_of_the_name_and_differ_per_table_and_use() {
        // FNV-1a 64 of "outbox-inbox-ddl:inbox", computed independently: every process agrees.
        assert_eq!(ddl_lock_key("outbox-inbox-ddl:inbox"), 0x1d3c_6fda_c758_6272);
        assert_ne!(ddl_lock_key("outbox-ddl:outbox"), ddl_lock_key("outbox-ddl:orders_outbox"));
        assert_ne!(ddl_lock_key("outbox-ddl:t"), ddl_lock_key("outbox-inbox-ddl:t"));
    }
}
