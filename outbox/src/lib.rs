//! Transactional outbox for Rust.
//!
//! One dependency line brings the core plus the adapters you choose by feature:
//!
//! | feature | brings |
//! |---|---|
//! | (always) | [`core`]: traits, listener and fallback engines, in-memory store and bus |
//! | `sea-orm` + `postgres` / `mysql` / `sqlite` | [`sea_orm`]: SQL storage, migration, transactional enqueue |
//! | `inbox` | [`inbox`]: the consumer-side transactional inbox (exactly-once effects) |
//! | `nats` (+ `jetstream`) | [`nats`]: NATS core and JetStream bus, NATS notifier |
//! | `nats-consumer` | the JetStream consumer runner, `nats::consumer` |
//! | `redis` (+ `cluster`) | [`redis`]: Redis Streams bus, Redis notifier, Redis Streams consumer runner |
//! | `kafka` | [`kafka`]: Apache Kafka bus (idempotent librdkafka producer, built from C) |
//! | `otel` | the `traceparent` header from the current span |
//! | `testkit` | the conformance suites for your own store or bus |
//!
//! Everything in `outbox-core` is also re-exported at the root.

pub use outbox_core as core;
pub use outbox_core::*;

#[cfg(feature = "kafka")]
pub use outbox_kafka as kafka;
#[cfg(feature = "nats")]
pub use outbox_nats as nats;
#[cfg(feature = "redis")]
pub use outbox_redis as redis;
#[cfg(feature = "sea-orm")]
pub use outbox_sea_orm as sea_orm;
/// The transactional inbox: see `outbox_sea_orm::inbox`.
#[cfg(feature = "inbox")]
pub use outbox_sea_orm::inbox;
