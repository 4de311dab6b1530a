//! The transactional inbox: a message's effects and its id are committed in one database
//! transaction, so a message delivered twice (the outbox and the brokers deliver at least
//! once) has its effects once.
//!
//! - [`Inbox::process`] runs your handler in a transaction that first inserts the message id;
//!   an id already recorded is [`Processed::Duplicate`] and the handler does not run.
//! - [`Inbox::handler`] is the same as a consumer [`Handler`](outbox_core::consumer::Handler)
//!   for a runner: deliveries that arrive together share one transaction ([`InboxHandler`]).
//! - [`InboxMigration`] / [`migrate_inbox`] create the table.
//! - [`Inbox::purge`] removes old ids in bounded batches (retention).
//!
//! ```
//! # #[cfg(feature = "sqlite")] {
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use outbox_sea_orm::connect_sqlite;
//! use outbox_sea_orm::inbox::{Inbox, InboxConfig, InboxError, Processed, migrate_inbox};
//! use sea_orm::{ConnectionTrait, DbErr};
//!
//! # let path = std::env::temp_dir().join(format!("outbox-inbox-doc-{}.db", uuid::Uuid::now_v7()));
//! let db = connect_sqlite(&path).await.unwrap();
//! migrate_inbox(&db, &InboxConfig::default()).await.unwrap();
//! db.execute_unprepared("CREATE TABLE shipments (order_id INTEGER)").await.unwrap();
//! let inbox = Inbox::new(db, InboxConfig::default().consumer("shipping")).unwrap();
//!
//! fn ship(txn: &sea_orm::DatabaseTransaction) -> outbox_sea_orm::inbox::InboxFuture<'_, (), DbErr> {
//!     Box::pin(async move {
//!         txn.execute_unprepared("INSERT INTO shipments (order_id) VALUES (7)").await?;
//!         Ok(())
//!     })
//! }
//! let first = inbox.process("0190c1a4-0000-7000-8000-000000000007", ship).await?;
//! let again = inbox.process("0190c1a4-0000-7000-8000-000000000007", ship).await?;
//! assert_eq!(first, Processed::Done(()));
//! assert_eq!(again, Processed::Duplicate);
//! # drop(inbox);
//! # let _ = std::fs::remove_file(&path);
//! # Ok::<(), InboxError<DbErr>>(())
//! # }).unwrap();
//! # }
//! ```

mod config;
mod handler;
mod migration;
mod retention;
mod store;

pub use config::{
    DEFAULT_CONSUMER, DEFAULT_INBOX_TABLE, InboxConfig, MAX_CONSUMER_LEN, MAX_INBOX_BATCH, MAX_INBOX_ID_LEN,
};
pub use handler::InboxHandler;
pub use migration::{InboxMigration, migrate_inbox};
pub use outbox_core::consumer::Processed;
pub use store::{Inbox, InboxError, InboxFuture};
