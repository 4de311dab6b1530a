#![doc = include_str!("../README.md")]

mod bus;
mod config;
mod error;
#[cfg(feature = "jetstream")]
mod jetstream;
mod notify;
#[cfg(feature = "jetstream")]
mod stream;

pub use bus::{CoreNatsBus, NATS_MSG_ID, nats_headers};
#[cfg(feature = "jetstream")]
pub use config::{JetStreamConfig, NatsBusConfig};
pub use config::{SubjectMapping, invalid_subject};
pub use error::connect;
#[cfg(feature = "jetstream")]
pub use jetstream::{JetStreamBus, JetStreamBusBuilder};
pub use notify::{NOTIFY_ERRORS, NatsNotifier};
#[cfg(feature = "jetstream")]
pub use stream::{StreamSpec, check_duplicate_window, ensure_stream, required_duplicate_window};

/// The async-nats version this crate is built on, re-exported so your code uses the same one.
pub use async_nats;
