#![doc = include_str!("../README.md")]

mod config;
#[cfg(feature = "jetstream")]
pub mod consumer;
mod core_bus;
mod error;
#[cfg(feature = "jetstream")]
mod jetstream_bus;
mod message;
mod notify;
#[cfg(feature = "jetstream")]
mod stream;
#[cfg(feature = "jetstream")]
mod stream_health;

#[cfg(feature = "jetstream")]
pub use config::{JetStreamConfig, NatsBusConfig};
pub use config::{SubjectMapping, invalid_subject};
pub use core_bus::CoreNatsBus;
pub use error::connect;
#[cfg(feature = "jetstream")]
pub use jetstream_bus::{JetStreamBus, JetStreamBusBuilder};
pub use message::{NATS_MSG_ID, nats_headers};
pub use notify::{NOTIFY_ERRORS, NatsNotifier};
#[cfg(feature = "jetstream")]
pub use stream::{StreamSpec, check_duplicate_window, ensure_stream, required_duplicate_window};
#[cfg(feature = "jetstream")]
pub use stream_health::MissingStream;

/// The async-nats version this crate is built on, re-exported so your code uses the same one.
pub use async_nats;
