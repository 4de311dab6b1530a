//! Quickstart: register users and their `UserRegistered` events in one SQLite transaction each,
//! watch the relay publish them, then stop the relay and watch the fallback catch up.
//!
//! `cargo run -p quickstart` — no server needed.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use outbox::sea_orm::{SqlStore, SqlStoreConfig, connect_sqlite, migrate};
use outbox::{
    Bus, ChannelNotifier, FallbackConfig, MemoryBus, NewMessage, OutboxEvent, OutboxMessage, OutboxStore,
    PublishOutcome, Relay,
};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};

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
async fn register(store: &SqlStore, email: &str) -> outbox::Result<i64> {
    let email = email.to_owned();
    store
        .transaction(|txn| {
            Box::pin(async move {
                let row = txn
                    .query_one_raw(Statement::from_sql_and_values(
                        txn.get_database_backend(),
                        "INSERT INTO users (email) VALUES (?) RETURNING id",
                        [email.clone().into()],
                    ))
                    .await
                    .map_err(|e| outbox::Error::permanent("app", e.to_string(), None))?
                    .ok_or_else(|| outbox::Error::permanent("app", "no id returned", None))?;
                let user_id: i64 =
                    row.try_get("", "id").map_err(|e| outbox::Error::permanent("app", e.to_string(), None))?;
                let event = NewMessage::from_event(&UserRegistered { user_id, email })?;
                Ok((user_id, vec![event]))
            })
        })
        .await
}

async fn create_schema(db: &DatabaseConnection) -> outbox::Result<()> {
    db.execute_unprepared(
        "CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY AUTOINCREMENT, email TEXT NOT NULL UNIQUE)",
    )
    .await
    .map_err(|e| outbox::Error::permanent("app", e.to_string(), None))?;
    migrate(db, &SqlStoreConfig::default()).await
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
