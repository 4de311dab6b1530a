//! Creates the inbox table, as a SeaORM migration or in one call.

use async_trait::async_trait;
use outbox_core::Result;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr};
use sea_orm_migration::{MigrationName, MigrationTrait, SchemaManager};

use super::config::{DEFAULT_INBOX_TABLE, InboxConfig};
use crate::config::{MAX_TABLE_LEN, check_identifier};
use crate::error::from_db_err;
use crate::migration::with_ddl_lock;
use crate::sql::Dialect;

/// The lock prefix of the inbox table's DDL, apart from the outbox table's.
const INBOX_DDL_LOCK: &str = "outbox-inbox-ddl:";

/// A migration that creates (`up`) or drops (`down`) one inbox table; add it to your
/// `Migrator` beside [`OutboxMigration`](crate::OutboxMigration):
///
/// ```
/// use outbox_sea_orm::OutboxMigration;
/// use outbox_sea_orm::inbox::InboxMigration;
/// use sea_orm_migration::{MigrationTrait, MigratorTrait};
///
/// struct Migrator;
///
/// impl MigratorTrait for Migrator {
///     fn migrations() -> Vec<Box<dyn MigrationTrait>> {
///         vec![Box::new(OutboxMigration::default()), Box::new(InboxMigration::default())]
///     }
/// }
/// # assert_eq!(Migrator::migrations().len(), 2);
/// ```
///
/// `up` is idempotent (`CREATE … IF NOT EXISTS`), so it also adopts a table created by
/// [`migrate_inbox`], and several processes may run it at once: on Postgres the creators of
/// one table take turns on a transaction-level advisory lock (see [`migrate_inbox`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboxMigration {
    table: String,
    name: String,
}

impl InboxMigration {
    /// A migration for `table`; it must be a plain identifier (see [`InboxConfig::table`]).
    pub fn new(table: impl Into<String>) -> Result<Self> {
        let table = table.into();
        check_identifier("inbox.table", &table, MAX_TABLE_LEN)?;
        Ok(Self { name: format!("m20261201_000001_create_inbox_table_{table}"), table })
    }

    /// The table it creates.
    pub fn table(&self) -> &str {
        &self.table
    }
}

impl Default for InboxMigration {
    /// The migration for [`DEFAULT_INBOX_TABLE`].
    fn default() -> Self {
        Self {
            table: DEFAULT_INBOX_TABLE.to_owned(),
            name: format!("m20261201_000001_create_inbox_table_{DEFAULT_INBOX_TABLE}"),
        }
    }
}

impl MigrationName for InboxMigration {
    fn name(&self) -> &str {
        &self.name
    }
}

#[async_trait]
impl MigrationTrait for InboxMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let dialect = Dialect::of(manager.get_database_backend()).map_err(|e| DbErr::Migration(e.to_string()))?;
        let conn = manager.get_connection();
        if dialect == Dialect::MySql {
            // One statement, which concurrent creators pass safely.
            for ddl in create_statements(dialect, &self.table) {
                conn.execute_unprepared(&ddl).await?;
            }
            return Ok(());
        }
        // Postgres: concurrent `CREATE … IF NOT EXISTS` of one name can fail on a catalog
        // unique index (`pg_type_typname_nsp_index`). SQLite: a transaction that read the
        // schema cannot then take the write lock once another creator wrote (`SQLITE_BUSY`).
        // So creators of this table take turns.
        let table = self.table.clone();
        with_ddl_lock(conn, dialect, &format!("{INBOX_DDL_LOCK}{table}"), move |txn| {
            Box::pin(async move {
                for ddl in create_statements(dialect, &table) {
                    txn.execute_unprepared(&ddl).await?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let dialect = Dialect::of(manager.get_database_backend()).map_err(|e| DbErr::Migration(e.to_string()))?;
        let sql = format!("DROP TABLE IF EXISTS {}", dialect.quote(&self.table));
        manager.get_connection().execute_unprepared(&sql).await.map(|_| ())
    }
}

/// Creates the inbox table of `config` and its index if they are missing (idempotent,
/// unversioned). Processes starting together may all call it: on Postgres the DDL runs in
/// one transaction holding `pg_advisory_xact_lock` on a key derived from the table name
/// (FNV-1a), since concurrent `CREATE … IF NOT EXISTS` there can fail on a catalog unique
/// index; SQLite's in a `BEGIN IMMEDIATE` transaction (its write lock, taken before the
/// first check); MySQL's single `CREATE TABLE IF NOT EXISTS` needs no lock.
///
/// ```no_run
/// # async fn run() -> outbox_core::Result<()> {
/// use outbox_sea_orm::inbox::{InboxConfig, migrate_inbox};
///
/// let db = sea_orm::Database::connect("postgres://postgres@127.0.0.1/app").await.unwrap();
/// migrate_inbox(&db, &InboxConfig::default()).await?;
/// # Ok(()) }
/// ```
pub async fn migrate_inbox(db: &DatabaseConnection, config: &InboxConfig) -> Result<()> {
    config.validate()?;
    let migration = InboxMigration::new(config.table.clone())?;
    let backend = db.get_database_backend();
    migration.up(&SchemaManager::new(db)).await.map_err(|e| from_db_err(backend, &config.table, e))
}

/// The DDL for `table`, one statement per string. The primary key is what makes a second
/// insert of an id wait for, then lose to, the first.
fn create_statements(dialect: Dialect, table: &str) -> Vec<String> {
    let t = dialect.quote(table);
    let age_idx = dialect.quote(&format!("{table}_processed_idx"));
    match dialect {
        Dialect::Postgres | Dialect::Sqlite => vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {t} (
                    consumer VARCHAR(128) NOT NULL,
                    message_id VARCHAR(255) NOT NULL,
                    processed_at BIGINT NOT NULL,
                    PRIMARY KEY (consumer, message_id)
                )"
            ),
            format!("CREATE INDEX IF NOT EXISTS {age_idx} ON {t} (consumer, processed_at)"),
        ],
        // MySQL has no CREATE INDEX IF NOT EXISTS, so the index lives in CREATE TABLE.
        Dialect::MySql => vec![format!(
            "CREATE TABLE IF NOT EXISTS {t} (
                consumer VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
                message_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
                processed_at BIGINT NOT NULL,
                PRIMARY KEY (consumer, message_id),
                KEY {age_idx} (consumer, processed_at)
            ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4"
        )],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_table_and_every_dialect_keys_the_id() {
        assert_eq!(
            InboxMigration::new("billing_inbox").unwrap().name(),
            "m20261201_000001_create_inbox_table_billing_inbox"
        );
        assert_eq!(InboxMigration::default().table(), DEFAULT_INBOX_TABLE);
        assert!(InboxMigration::new("bad name").is_err());
        for d in [Dialect::Postgres, Dialect::MySql, Dialect::Sqlite] {
            let ddl = create_statements(d, "t").join("\n");
            assert!(ddl.contains("PRIMARY KEY (consumer, message_id)") && ddl.contains("t_processed_idx"), "{d:?}");
        }
    }
}
