//! The consumer side, broker-neutral: what a delivered message looks like ([`Delivery`]), what
//! a handler returns ([`Processed`], [`HandlerError`]), the [`Handler`] trait with its typed
//! JSON form ([`json_handler`]), the runner settings ([`ConsumerConfig`]) and the metric
//! names. The runners live in the broker crates (`outbox_nats::consumer`), the inbox that
//! makes effects exactly-once in `outbox_sea_orm::inbox`.

mod config;
mod delivery;
mod handle;
mod handler;
pub mod metrics;
mod stats;

pub use config::ConsumerConfig;
pub use delivery::Delivery;
pub use handle::{ConsumerHandle, Shutdown};
pub use handler::{Handler, HandlerError, HandlerResult, Json, Processed, handler_fn, json_handler};
pub use stats::{ConsumerCounters, ConsumerStats, Counted, delivery_span, guarded_handle};
