//! The outbox table: one row per message; dead letters are rows with [`status::DEAD`].
//!
//! | column | type (Postgres / MySQL / SQLite) | meaning |
//! |---|---|---|
//! | `seq` | `BIGINT` identity / `BIGINT AUTO_INCREMENT` / `INTEGER AUTOINCREMENT`, primary key | enqueue order; per-key order follows it |
//! | `id` | `UUID` / `BINARY(16)` / `BLOB`, unique | the message id (UUIDv7) |
//! | `topic` | `VARCHAR(255)` (binary collation on MySQL) | destination |
//! | `msg_key` | `VARCHAR(255)`, null | ordering key |
//! | `partition_no` | `INTEGER`, null | the key's partition (FNV-1a of the key modulo `key_partitions`); null without a key or with partitioning off |
//! | `payload` | `BYTEA` / `LONGBLOB` / `BLOB` | payload bytes |
//! | `headers` | `TEXT` (`MEDIUMTEXT` on MySQL) | JSON object of strings |
//! | `status` | `SMALLINT` | [`status::PENDING`], [`status::PUBLISHED`] (only with `Retention::KeepPublished`), [`status::DEAD`] |
//! | `attempts` | `INT` | failed publish attempts |
//! | `last_error` | `TEXT`, null | the last publish error (truncated to [`MAX_ERROR_LEN`] bytes) |
//! | `created_at` | `BIGINT` | enqueue time, unix ms |
//! | `available_at` | `BIGINT` | earliest next attempt, unix ms |
//! | `claimed_until` | `BIGINT`, null | end of the current claim, unix ms |
//! | `claim_token` | like `id`, null | the lease token of the current claim |
//! | `finished_at` | `BIGINT`, null | when it was published (kept rows) or dead-lettered, unix ms |
//!
//! Indexes: `(status, seq)` for dead letters and purges; `(partition_no, status, seq)` for
//! sweeps (per held partition, and of rows without one); `(msg_key, status, seq)` for the
//! head-of-key check (on Postgres a partial `(msg_key, seq)` index over pending and dead
//! rows). Beside it, `<table>_partitions` holds a lease per partition (`partition_no`,
//! `owner`, `epoch`, `lease_until`) and `<table>_relays` a row per live relay (`owner`,
//! `alive_until`). All times are computed by the application
//! ([`now_millis`](outbox_core::message::now_millis)), which keeps the SQL portable.

pub use crate::partition::partition_of;

/// Values of the `status` column.
pub mod status {
    /// Waiting to be published (claimed or not).
    pub const PENDING: i16 = 0;
    /// Published and kept (only with `Retention::KeepPublished`).
    pub const PUBLISHED: i16 = 1;
    /// Dead-lettered: blocks its key until replayed or purged.
    pub const DEAD: i16 = 2;
}

/// Longest `last_error` kept, in bytes; longer errors are cut at a character boundary.
pub const MAX_ERROR_LEN: usize = 4096;

/// The columns a store reads back for a message, in the order `SqlStore::decode` reads them.
pub(crate) const MESSAGE_COLUMNS: &str =
    "seq, id, topic, msg_key, payload, headers, created_at, attempts, last_error, finished_at";

/// A SeaORM entity of the outbox table, to query it with SeaORM, e.g. for an admin page. The
/// relay never needs it.
///
/// [`Entity`](entity::Entity) carries its table name: [`Entity::of`](entity::Entity::of) takes
/// it from the store's [`SqlStoreConfig`](crate::SqlStoreConfig), and
/// [`Entity::default()`](entity::Entity::default) is the default table (`outbox_messages`).
/// SeaORM's `Entity::find()` always reads the default table; [`select`](entity::Entity::select)
/// reads the entity's own, and takes the same filters and orderings:
///
/// ```
/// use outbox_sea_orm::SqlStoreConfig;
/// use outbox_sea_orm::schema::{entity, status};
/// use sea_orm::{ColumnTrait, DbBackend, QueryFilter, QueryOrder, QueryTrait};
///
/// let config = SqlStoreConfig::default().table("orders_outbox");
/// let dead_letters = entity::Entity::of(&config)
///     .select()
///     .filter(entity::Column::Status.eq(status::DEAD))
///     .order_by_asc(entity::Column::Seq);
/// let sql = dead_letters.build(DbBackend::Postgres).to_string();
/// assert!(sql.contains(r#"FROM "orders_outbox" AS "outbox_messages""#), "{sql}");
/// ```
///
/// The entity is for reading: SeaORM builds writes (`ActiveModel::insert`, column conditions
/// of `update_many`) from the default entity. Change messages through the store (`replay`,
/// `purge_dead`, …) instead.
pub mod entity {
    // The derive generates Column, ActiveModel and friends without doc comments.
    #![allow(missing_docs)]

    use std::collections::BTreeSet;
    use std::sync::Mutex;

    use sea_orm::entity::prelude::*;
    use sea_orm::{QueryTrait, Select};

    use crate::config::{DEFAULT_TABLE, SqlStoreConfig};

    /// The outbox table, by name.
    #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, DeriveEntity)]
    pub struct Entity {
        table: &'static str,
    }

    impl Default for Entity {
        /// The default table, [`DEFAULT_TABLE`].
        fn default() -> Self {
            Self { table: DEFAULT_TABLE }
        }
    }

    impl EntityName for Entity {
        fn table_name(&self) -> &'static str {
            self.table
        }
    }

    impl Entity {
        /// The table of `config` ([`SqlStoreConfig::table`]).
        pub fn of(config: &SqlStoreConfig) -> Self {
            Self { table: intern(&config.table) }
        }

        /// `SELECT` every column of this entity's table: SeaORM's `Entity::find()`, which
        /// always reads the default table, on this one. The table is aliased to the default
        /// name, so conditions and orderings on [`Column`] apply to it.
        pub fn select(self) -> Select<Entity> {
            let mut select = Entity::find();
            if self != Entity::default() {
                QueryTrait::query(&mut select).from_clear().from_as(self.table_ref(), Entity::default());
            }
            select
        }
    }

    /// SeaORM wants a `&'static str` table name: each distinct name is leaked once.
    fn intern(name: &str) -> &'static str {
        static NAMES: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
        let mut names = NAMES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match names.get(name) {
            Some(known) => known,
            None => {
                let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
                names.insert(leaked);
                leaked
            }
        }
    }

    /// One outbox row; see the [module docs](crate::schema) for each column.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub seq: i64,
        #[sea_orm(unique)]
        pub id: Uuid,
        pub topic: String,
        pub msg_key: Option<String>,
        pub partition_no: Option<i32>,
        pub payload: Vec<u8>,
        #[sea_orm(column_type = "Text")]
        pub headers: String,
        pub status: i16,
        pub attempts: i32,
        #[sea_orm(column_type = "Text", nullable)]
        pub last_error: Option<String>,
        pub created_at: i64,
        pub available_at: i64,
        pub claimed_until: Option<i64>,
        pub claim_token: Option<Uuid>,
        pub finished_at: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
