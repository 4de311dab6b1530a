//! The in-memory store and bus run the same conformance suite as every adapter.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use outbox_core::testkit::bus::{BusFixture, BusProbe, Received};
use outbox_core::{MemoryBus, MemoryStore, OutboxAdmin, Retention};

async fn memory_store(retention: Retention) -> Arc<dyn OutboxAdmin> {
    Arc::new(MemoryStore::with_retention(retention))
}

outbox_core::store_conformance!(memory_store);

struct MemoryProbe(MemoryBus);

#[async_trait]
impl BusProbe for MemoryProbe {
    async fn received(&self, topic: &str, n: usize, timeout: Duration) -> Vec<Received> {
        let _ = self.0.wait_for(n, timeout).await;
        self.0
            .messages()
            .into_iter()
            .filter(|m| m.topic == topic)
            .map(|m| Received {
                headers: m.broker_headers().map(|(k, v)| (k.to_owned(), v.into_owned())).collect(),
                payload: m.payload,
            })
            .collect()
    }
}

async fn memory_bus() -> BusFixture {
    let bus = MemoryBus::new();
    BusFixture { bus: Arc::new(bus.clone()), topic: "conformance".into(), probe: Box::new(MemoryProbe(bus)) }
}

outbox_core::bus_conformance!(memory_bus);
