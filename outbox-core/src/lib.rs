#![doc = include_str!("../README.md")]

pub mod bus;
pub mod config;
pub mod consumer;
mod engine;
pub mod error;
pub mod memory;
pub mod message;
pub mod metrics;
pub mod notify;
pub mod store;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use bus::{Bus, PublishOutcome};
pub use config::{FallbackConfig, ListenerConfig, RelayConfig, RetryPolicy};
pub use engine::{Relay, RelayBuilder, RelayHandle, RelayHealth, RelayStats};
pub use error::{BoxError, Error, Result};
pub use memory::{MemoryBus, MemoryStore};
pub use message::{Codec, Headers, JsonCodec, MessageId, NewMessage, OutboxEvent, OutboxMessage, UnixMillis};
pub use notify::{ChannelNotifier, NoopNotifier, Notice, NoticeStream, Notifier};
pub use store::{
    DeadLetter, DeadLetterQuery, Disposition, Failure, Lease, OutboxAdmin, OutboxStats, OutboxStore, ReplaySelector,
    Retention,
};
