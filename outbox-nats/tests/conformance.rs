//! The shared Bus contract on JetStream.

mod common;

use std::sync::Arc;

use outbox_core::testkit::bus::BusFixture;
use outbox_nats::JetStreamBus;

async fn setup() -> Option<BusFixture> {
    let client = common::client().await?;
    let stream = common::TestStream::new(&client).await;
    let bus = JetStreamBus::builder(client).build().expect("bus");
    let topic = stream.topic("conformance");
    Some(BusFixture { bus: Arc::new(bus), topic, probe: Box::new(common::StreamProbe(stream)) })
}

outbox_core::bus_conformance!(setup);
