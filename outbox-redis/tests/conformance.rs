//! The shared Bus contract on Redis Streams (with and without Lua dedup).

mod common;

use outbox_core::testkit::bus::BusFixture;
use outbox_redis::{Dedup, RedisStreamsBus};

async fn fixture(dedup: Dedup) -> Option<BusFixture> {
    let conn = common::conn().await?;
    let prefix = common::prefix();
    let bus = RedisStreamsBus::builder(conn.clone()).stream_prefix(&prefix).dedup(dedup).build().await.expect("bus");
    Some(common::conformance_fixture(bus, conn, &prefix))
}

mod plain {
    async fn setup() -> Option<outbox_core::testkit::bus::BusFixture> {
        super::fixture(outbox_redis::Dedup::Off).await
    }
    outbox_core::bus_conformance!(setup);
}

mod lua_dedup {
    async fn setup() -> Option<outbox_core::testkit::bus::BusFixture> {
        super::fixture(outbox_redis::Dedup::Lua).await
    }
    outbox_core::bus_conformance!(setup);
}
