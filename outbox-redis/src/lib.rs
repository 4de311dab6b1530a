#![doc = include_str!("../README.md")]

mod bus;
mod classify;
#[cfg(feature = "cluster")]
pub mod cluster;
mod config;
mod conn;
pub mod consumer;
mod dedup;
mod error;
mod notify;

pub use bus::{PAYLOAD_FIELD, RedisBusBuilder, RedisStreamsBus};
pub use config::{
    DEFAULT_CONNECTION_TIMEOUT, DEFAULT_RESPONSE_TIMEOUT, Dedup, DedupMode, IDMP_MAX_SIZE, RedisBusConfig,
    StreamMapping, dedup_key, has_hash_tag,
};
pub use error::{connect, connect_with_timeouts, is_temporary, map_err};
pub use notify::{DEFAULT_HEARTBEAT, NOTIFY_ERRORS, RedisNotifier};

/// The redis crate this one is built on, re-exported so your code uses the same version.
pub use redis;
