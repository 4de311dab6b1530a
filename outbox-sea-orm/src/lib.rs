#![doc = include_str!("../README.md")]

mod config;
#[cfg(feature = "sqlite")]
mod connect;
mod enqueue;
pub mod error;
#[cfg(feature = "postgres")]
mod held;
pub mod inbox;
mod migration;
#[cfg(feature = "postgres")]
mod notify;
mod partition;
pub mod schema;
mod sql;
mod store;
mod tx;

pub use config::{
    ClaimMode, DEFAULT_KEY_PARTITIONS, DEFAULT_PARTITION_LEASE_TTL, DEFAULT_TABLE, MAX_CHANNEL_LEN, MAX_KEY_PARTITIONS,
    MAX_TABLE_LEN, SqlStoreConfig,
};
#[cfg(feature = "sqlite")]
pub use connect::{SQLITE_BUSY_TIMEOUT, SQLITE_MAX_CONNECTIONS, connect_sqlite, sqlite_connect_options};
pub use error::WriteError;
pub use migration::{Migrator, OutboxMigration, migrate};
#[cfg(feature = "postgres")]
pub use notify::PgNotifier;
pub use store::SqlStore;
pub use tx::{OutboxTransaction, TransactionFuture};
