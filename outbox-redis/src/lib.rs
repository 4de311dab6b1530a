#![doc = include_str!("../README.md")]

mod bus;
#[cfg(feature = "cluster")]
pub mod cluster;
mod config;
mod error;
mod notify;

pub use bus::{PAYLOAD_FIELD, RedisBusBuilder, RedisStreamsBus};
pub use config::{Dedup, DedupMode, RedisBusConfig, StreamMapping, dedup_key, has_hash_tag};
pub use error::{DEFAULT_CONNECTION_TIMEOUT, DEFAULT_RESPONSE_TIMEOUT, connect, is_temporary, map_err};
pub use notify::{NOTIFY_ERRORS, RedisNotifier};

/// The redis crate this one is built on, re-exported so your code uses the same version.
pub use redis;
