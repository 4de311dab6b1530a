//! Quickstart: register users and their `UserRegistered` events in one SQLite transaction each,
//! watch the relay publish them, then stop the relay and watch the fallback catch up.
//!
//! `cargo run -p quickstart` — no server needed.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use outbox::sea_orm::{SqlStore, SqlStoreConfig, WriteError, connect_sqlite, migrate};
use outbox::{
    Bus, ChannelNotifier, FallbackConfig, MemoryBus, OutboxEvent, OutboxMessage, OutboxStore, PublishOutcome, Relay,
};
use sea_orm::{ActiveModelTrait, ConnectionTrait, DatabaseConnection, Schema, Set};

/// The business table: a SeaORM entity like any other.
mod users {
    use sea_orm::entity::prelude::*;

    /// One registered user.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "users")]
    pub(crate) struct Model {
        /// Assigned by the database.
        #[sea_orm(primary_key)]
        pub id: i64,
        /// Unique: registering it twice fails with a unique violation.
        #[sea_orm(unique)]
        pub email: String,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub(crate) enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The domain event, as the auth service of the original article raises it.
#[derive(serde::Serialize)]
struct UserRegistered {
    user_id: i64,
    email: String,
}

impl OutboxEvent for UserRegistered {
    fn topic(&self) -> &str {
        "users.registered"
    }
    fn key(&self) -> Option<String> {
        Some(self.user_id.to_string())
    }
}

/// Prints each event, then keeps it in memory so the demo can wait for it.
#[derive(Debug, Default)]
struct PrintBus {
    seen: MemoryBus,
}

#[async_trait]
impl Bus for PrintBus {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<PublishOutcome> {
        for m in batch {
            println!(
                "  published {} key={} {}",
                m.topic,
                m.key.as_deref().unwrap_or("-"),
                String::from_utf8_lossy(&m.payload)
            );
        }
        self.seen.publish(batch).await
    }
}

/// Registers a user: the business row and its event commit together, then the relay is notified.
async fn register(store: &SqlStore, email: &str) -> Result<i64, WriteError> {
    let mut tx = store.begin().await?;
    let user = users::ActiveModel { email: Set(email.to_owned()), ..Default::default() }.insert(&*tx).await?;
    tx.enqueue(&UserRegistered { user_id: user.id, email: user.email })?;
    tx.commit().await?;
    Ok(user.id)
}

async fn create_schema(db: &DatabaseConnection) -> Result<(), WriteError> {
    db.execute(&Schema::new(db.get_database_backend()).create_table_from_entity(users::Entity)).await?;
    Ok(migrate(db, &SqlStoreConfig::default()).await?)
}

#[tokio::main]
async fn main() -> outbox::Result<()> {
    let path = std::env::temp_dir().join(format!("outbox-quickstart-{}.db", uuid::Uuid::now_v7()));
    println!("SQLite database: {}", path.display());
    let db = connect_sqlite(&path).await?;
    create_schema(&db).await?;

    let notifier = Arc::new(ChannelNotifier::new(1024));
    let store = SqlStore::new(db, SqlStoreConfig::default())?;
    let writer = store.clone().with_notifier(notifier.clone());
    let bus = Arc::new(PrintBus::default());
    let fallback = FallbackConfig::default().interval(Duration::from_millis(500)).min_age(Duration::from_secs(1));

    println!("\n1. Relay running: events go out through the listener as soon as each transaction commits");
    let relay = Relay::builder(Arc::new(store.clone()), bus.clone())
        .notifier(notifier.clone())
        .fallback(fallback.clone())
        .build()?
        .spawn();
    for email in ["ada@example.com", "grace@example.com", "edsger@example.com"] {
        let id = register(&writer, email).await?;
        println!("registered user {id} <{email}>");
    }
    bus.seen.wait_for(3, Duration::from_secs(10)).await?;
    relay.shutdown().await?;

    println!("\n2. Relay stopped: two more users register; their notices reach no one");
    let unnotified = store.clone(); // no notifier: as if the notice was lost in a crash
    for email in ["barbara@example.com", "tony@example.com"] {
        let id = register(&unnotified, email).await?;
        println!("registered user {id} <{email}>");
    }
    println!("pending in the outbox: {}", store.stats().await?.pending);

    println!("\n3. A new relay starts: its fallback sweep finds what was left behind");
    let relay =
        Relay::builder(Arc::new(store.clone()), bus.clone()).without_listener().fallback(fallback).build()?.spawn();
    bus.seen.wait_for(5, Duration::from_secs(10)).await?;
    relay.shutdown().await?;

    let stats = store.stats().await?;
    println!("\ndone: {} events published, {} pending, {} dead", bus.seen.len(), stats.pending, stats.dead);
    drop(store);
    drop(writer);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    Ok(())
}
