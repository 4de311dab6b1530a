//! Publishes three messages to the webhook at `WEBHOOK_URL` (default
//! `http://127.0.0.1:8080/hook`) through a relay over an in-memory store, then exits.

use std::sync::Arc;
use std::time::Duration;

use custom_bus::WebhookBus;
use outbox::{FallbackConfig, MemoryStore, NewMessage, OutboxStore, Relay};

#[tokio::main]
async fn main() -> outbox::Result<()> {
    let url = std::env::var("WEBHOOK_URL").unwrap_or_else(|_| "http://127.0.0.1:8080/hook".into());
    let store = Arc::new(MemoryStore::new());
    let bus = Arc::new(WebhookBus::new(&url, Duration::from_secs(5))?);
    let relay = Relay::builder(store.clone(), bus)
        .fallback(FallbackConfig::default().min_age(Duration::ZERO).interval(Duration::from_millis(200)))
        .build()?
        .spawn();
    store.enqueue((1..=3).map(|i| NewMessage::new("greetings", format!("hello {i}"))).collect()).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.stats().await?.pending > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = store.stats().await?;
    relay.shutdown().await?;
    println!("pending {} dead {} (webhook {url})", stats.pending, stats.dead);
    Ok(())
}
