//! How a topic becomes a stream key, and the bus settings.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use outbox_core::{Error, OutboxMessage, Result};

/// Maps an outbox message to a Redis stream key.
#[derive(Clone)]
pub enum StreamMapping {
    /// Stream key = prefix + topic. Default prefix `outbox:`.
    Prefix(String),
    /// Any rule you like.
    Custom(Arc<dyn Fn(&OutboxMessage) -> String + Send + Sync>),
}

impl Default for StreamMapping {
    fn default() -> Self {
        Self::Prefix("outbox:".into())
    }
}

impl fmt::Debug for StreamMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Prefix(p) => f.debug_tuple("Prefix").field(p).finish(),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

impl StreamMapping {
    /// A custom rule, e.g. `StreamMapping::custom(|m| format!("{{{}}}:events", m.topic))`.
    pub fn custom(rule: impl Fn(&OutboxMessage) -> String + Send + Sync + 'static) -> Self {
        Self::Custom(Arc::new(rule))
    }

    /// The stream key for `msg`.
    pub fn stream_key(&self, msg: &OutboxMessage) -> String {
        match self {
            Self::Prefix(p) => format!("{p}{}", msg.topic),
            Self::Custom(f) => f(msg),
        }
    }
}

/// Broker-side deduplication of redelivered messages (a relay crash between publish and
/// settle, or racing relays).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Dedup {
    /// The default: idempotent `XADD … IDMP` on Redis ≥ 8.6, the Lua script on older servers,
    /// so every server drops redeliveries within the dedup window.
    #[default]
    Auto,
    /// No dedup: a redelivery after a crash appends a second entry (with the same id field).
    Off,
    /// An atomic Lua script: `SET <dedup key> NX PX <ttl>`, then `XADD` only if the key was
    /// new. Works on any Redis with scripting; costs one extra key per message for the TTL.
    Lua,
    /// The same as [`Dedup::Auto`], which used to mean no dedup before Redis 8.6.
    IdmpOrLua,
}

/// What the bus does after detecting the server version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DedupMode {
    /// Plain `XADD`.
    None,
    /// `XADD … IDMP outbox <message id>` (Redis ≥ 8.6).
    Idmp,
    /// The Lua script.
    Lua,
}

/// Default time to wait for a reply before a command counts as failed (retryable).
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time to wait for a connection.
pub const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// How many ids per stream IDMP remembers (`XCFGSET … IDMP-MAXSIZE`, the server's maximum);
/// the server default of 100 is smaller than one batch.
pub const IDMP_MAX_SIZE: u32 = 10_000;

/// Redis Streams bus settings, validated by the builder.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RedisBusConfig {
    /// Topic → stream key rule. Default prefix `outbox:`.
    pub streams: StreamMapping,
    /// Approximate cap on stream length (`MAXLEN ~ N`); `None` keeps everything. At least 1.
    /// Trimming ignores consumer groups: entries that consumers have not read yet (or read and
    /// not acknowledged) are dropped too once the stream is past `N`, so size `N` above the
    /// worst backlog a consumer may build up.
    pub max_len: Option<usize>,
    /// Broker-side dedup. Default [`Dedup::Auto`]: IDMP on Redis ≥ 8.6, else the Lua script.
    pub dedup: Dedup,
    /// How long a message id is remembered for dedup (whole seconds with IDMP). Default 10
    /// minutes; 1 s to 24 h. Keep it above the relay's `claim_ttl` plus retry horizon.
    pub dedup_window: Duration,
    /// Longest wait for a batch's replies; past it every message of the batch is retryable.
    /// Default 5 s; 1 ms to 10 min. Also the connection manager's response timeout when the
    /// bus connects itself ([`RedisStreamsBus::from_url`](crate::RedisStreamsBus::from_url)).
    pub response_timeout: Duration,
    /// Longest wait for a (re)connection when the bus connects itself. Default 5 s; 1 ms to
    /// 10 min.
    pub connection_timeout: Duration,
}

impl Default for RedisBusConfig {
    fn default() -> Self {
        Self {
            streams: StreamMapping::default(),
            max_len: None,
            dedup: Dedup::Auto,
            dedup_window: Duration::from_secs(600),
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            connection_timeout: DEFAULT_CONNECTION_TIMEOUT,
        }
    }
}

impl RedisBusConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        if self.max_len == Some(0) {
            return Err(Error::config("redis.max_len", "must be at least 1 (or unset to keep everything)"));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&self.dedup_window) {
            return Err(Error::config("redis.dedup_window", "must be between 1 s and 24 h"));
        }
        let timeouts = Duration::from_millis(1)..=Duration::from_secs(600);
        if !timeouts.contains(&self.response_timeout) {
            return Err(Error::config("redis.response_timeout", "must be between 1 ms and 10 min"));
        }
        if !timeouts.contains(&self.connection_timeout) {
            return Err(Error::config("redis.connection_timeout", "must be between 1 ms and 10 min"));
        }
        if let StreamMapping::Prefix(p) = &self.streams
            && p.chars().any(char::is_whitespace)
        {
            return Err(Error::config("redis.stream_prefix", format!("`{p}` contains whitespace")));
        }
        Ok(())
    }
}

/// The dedup key for a message on `stream`: it carries the stream's hash tag (or the whole
/// stream key as the tag) so both land in the same cluster slot.
pub fn dedup_key(stream: &str, id: &str) -> String {
    if has_hash_tag(stream) { format!("{stream}:dedup:{id}") } else { format!("{{{stream}}}:dedup:{id}") }
}

/// Whether `key` has a non-empty `{…}` hash tag, which then alone decides its cluster slot.
pub fn has_hash_tag(key: &str) -> bool {
    key.find('{').is_some_and(|open| key[open + 1..].find('}').is_some_and(|close| close > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_keys_share_the_stream_slot() {
        assert_eq!(dedup_key("outbox:orders", "1"), "{outbox:orders}:dedup:1");
        assert_eq!(dedup_key("outbox:{orders}", "1"), "outbox:{orders}:dedup:1");
        assert!(!has_hash_tag("a{}b"));
        assert!(has_hash_tag("a{x}b"));
    }

    #[test]
    fn bad_settings_name_their_field() {
        let c = RedisBusConfig { max_len: Some(0), ..RedisBusConfig::default() };
        assert!(c.validate().unwrap_err().to_string().contains("redis.max_len"));
        let c = RedisBusConfig { dedup_window: Duration::ZERO, ..RedisBusConfig::default() };
        assert!(c.validate().unwrap_err().to_string().contains("redis.dedup_window"));
        let c = RedisBusConfig { response_timeout: Duration::ZERO, ..RedisBusConfig::default() };
        assert!(c.validate().unwrap_err().to_string().contains("redis.response_timeout"));
        let c = RedisBusConfig { connection_timeout: Duration::from_secs(3600), ..RedisBusConfig::default() };
        assert!(c.validate().unwrap_err().to_string().contains("redis.connection_timeout"));
        let c = RedisBusConfig { streams: StreamMapping::Prefix("a b".into()), ..RedisBusConfig::default() };
        assert!(c.validate().unwrap_err().to_string().contains("redis.stream_prefix"));
        RedisBusConfig::default().validate().unwrap();
    }
}
