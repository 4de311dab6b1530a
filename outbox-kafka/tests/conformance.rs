//! The shared Bus contract on Kafka, each case on a topic of its own.

mod common;

use std::sync::Arc;

use outbox_core::testkit::bus::BusFixture;

async fn setup() -> Option<BusFixture> {
    let bus = common::bus(|b| b).await?;
    let topic = common::TestTopic::create(&common::url(), "conformance", 3, &[]).await;
    let name = topic.name.clone();
    Some(BusFixture { bus: Arc::new(bus), topic: name, probe: Box::new(common::TopicProbe(topic)) })
}

outbox_core::bus_conformance!(setup);
