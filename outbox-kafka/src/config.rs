//! How a topic becomes a Kafka topic, and the bus settings.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use outbox_core::{Error, OutboxMessage, Result};

/// Maps an outbox message to a Kafka topic.
#[derive(Clone, Default)]
pub enum TopicMapping {
    /// The outbox topic is the Kafka topic.
    #[default]
    Identity,
    /// The Kafka topic is this prefix followed by the outbox topic, e.g. `events.` + `orders`.
    Prefix(String),
    /// Any rule you like, e.g. a lookup in a map.
    Custom(Arc<dyn Fn(&OutboxMessage) -> String + Send + Sync>),
}

impl fmt::Debug for TopicMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Identity => f.write_str("Identity"),
            Self::Prefix(p) => f.debug_tuple("Prefix").field(p).finish(),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

impl TopicMapping {
    /// A [`TopicMapping::Custom`] rule from a closure.
    pub fn custom(rule: impl Fn(&OutboxMessage) -> String + Send + Sync + 'static) -> Self {
        Self::Custom(Arc::new(rule))
    }

    /// The Kafka topic for `msg`.
    pub fn topic(&self, msg: &OutboxMessage) -> String {
        match self {
            Self::Identity => msg.topic.clone(),
            Self::Prefix(p) => format!("{p}{}", msg.topic),
            Self::Custom(f) => f(msg),
        }
    }
}

/// Longest Kafka topic name, in bytes.
pub const MAX_TOPIC_NAME_LEN: usize = 249;

/// Why Kafka would refuse `topic` as a name, if it would: empty, `.` or `..`, longer than
/// [`MAX_TOPIC_NAME_LEN`], or a character outside `[a-zA-Z0-9._-]`.
pub fn invalid_topic(topic: &str) -> Option<String> {
    if topic.is_empty() {
        return Some("the Kafka topic is empty".into());
    }
    if topic == "." || topic == ".." {
        return Some(format!("`{topic}` is not a legal Kafka topic name"));
    }
    if topic.len() > MAX_TOPIC_NAME_LEN {
        return Some(format!("Kafka topic `{topic}` is {} bytes, the limit is {MAX_TOPIC_NAME_LEN}", topic.len()));
    }
    if let Some(c) = topic.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Some(format!(
            "Kafka topic `{topic}` contains {c:?}; legal characters are a-z, A-Z, 0-9, `.`, `_`, `-`"
        ));
    }
    None
}

/// librdkafka properties the bus sets itself, because the delivery guarantees rest on them;
/// [`KafkaBusConfig::options`] may not name them.
pub const FIXED_OPTIONS: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "max.in.flight.requests.per.connection",
    "max.in.flight",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "request.timeout.ms",
    "linger.ms",
    "queue.buffering.max.ms",
    "client.id",
    "allow.auto.create.topics",
    "topic.metadata.propagation.max.ms",
    "enable.gapless.guarantee",
    "transactional.id",
];

/// Default [`KafkaBusConfig::delivery_timeout`]: below half the relay's default 30 s claim
/// ttl, so librdkafka gives up (and the bus reports) before the relay's publish deadline.
pub const DEFAULT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`KafkaBusConfig::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Default [`KafkaBusConfig::enqueue_timeout`].
pub const DEFAULT_ENQUEUE_TIMEOUT: Duration = Duration::from_secs(1);

/// Kafka bus settings, validated by the builder. The producer is always idempotent
/// (`enable.idempotence=true`, `acks=all`); see the crate docs.
#[derive(Clone)]
#[non_exhaustive]
pub struct KafkaBusConfig {
    /// `bootstrap.servers`: comma-separated `host:port` list. Required.
    pub bootstrap_servers: String,
    /// Topic → Kafka topic rule. Default [`TopicMapping::Identity`].
    pub topics: TopicMapping,
    /// `message.timeout.ms`: how long librdkafka keeps retrying a message (reconnects,
    /// leader changes) before its delivery report fails it, retryable. Default 10 s; 1 s to
    /// 10 min. Keep it below half the relay's `claim_ttl` (the relay's publish deadline).
    pub delivery_timeout: Duration,
    /// `request.timeout.ms`: how long one produce request waits for the broker. Default 5 s;
    /// 1 s to `delivery_timeout`.
    pub request_timeout: Duration,
    /// `max.in.flight.requests.per.connection`. Default 5; 1 to 5 (the idempotent producer
    /// keeps order across its retries only up to 5).
    pub max_in_flight: u32,
    /// `linger.ms`: how long librdkafka waits to fill a produce request. Default 5 ms; at most
    /// 900 s (librdkafka's limit).
    pub linger: Duration,
    /// How long a message waits for room when librdkafka's queue
    /// (`queue.buffering.max.messages`) is full, before it is retryable. Default 1 s; up to
    /// 10 min.
    pub enqueue_timeout: Duration,
    /// `topic.metadata.propagation.max.ms`: how long a topic the broker says does not exist is
    /// waited for (a topic just created may not have reached every broker yet) before its
    /// messages fail `Permanent`. Default 5 s; up to 10 min, capped at `delivery_timeout` (the
    /// messages would time out, `Retryable`, first).
    pub missing_topic_timeout: Duration,
    /// `client.id`. Default `outbox`.
    pub client_id: String,
    /// `allow.auto.create.topics`: whether producing may create a missing topic (if the broker
    /// also allows it). Default `false`: a message to a missing topic is `Permanent`.
    pub auto_create_topics: bool,
    /// Further librdkafka properties (TLS, SASL, compression, `queue.buffering.max.messages`,
    /// …). None may be one of [`FIXED_OPTIONS`]. Values of `*password*`, `*secret*` and
    /// `*key*`-named properties are hidden from `Debug`.
    pub options: BTreeMap<String, String>,
}

impl Default for KafkaBusConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: String::new(),
            topics: TopicMapping::Identity,
            delivery_timeout: DEFAULT_DELIVERY_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_in_flight: 5,
            linger: Duration::from_millis(5),
            enqueue_timeout: DEFAULT_ENQUEUE_TIMEOUT,
            missing_topic_timeout: Duration::from_secs(5),
            client_id: "outbox".into(),
            auto_create_topics: false,
            options: BTreeMap::new(),
        }
    }
}

/// Whether a librdkafka property's value is a secret (its name contains `password`,
/// `secret` or `key`): such values are hidden wherever settings are shown.
pub fn is_secret_option(name: &str) -> bool {
    ["password", "secret", "key"].iter().any(|s| name.contains(s))
}

impl fmt::Debug for KafkaBusConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let options: BTreeMap<&str, &str> = self
            .options
            .iter()
            .map(|(k, v)| (k.as_str(), if is_secret_option(k) { "***" } else { v.as_str() }))
            .collect();
        f.debug_struct("KafkaBusConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("topics", &self.topics)
            .field("delivery_timeout", &self.delivery_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_in_flight", &self.max_in_flight)
            .field("linger", &self.linger)
            .field("enqueue_timeout", &self.enqueue_timeout)
            .field("missing_topic_timeout", &self.missing_topic_timeout)
            .field("client_id", &self.client_id)
            .field("auto_create_topics", &self.auto_create_topics)
            .field("options", &options)
            .finish()
    }
}

fn millis(d: Duration) -> String {
    d.as_millis().to_string()
}

impl KafkaBusConfig {
    /// Settings for `bootstrap_servers`, the rest at their defaults.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self { bootstrap_servers: bootstrap_servers.into(), ..Self::default() }
    }

    /// Checks every field; the error names the first bad one and its allowed range.
    pub fn validate(&self) -> Result<()> {
        let servers: Vec<&str> = self.bootstrap_servers.split(',').map(str::trim).collect();
        if servers.iter().any(|s| s.is_empty()) {
            return Err(Error::config("kafka.bootstrap_servers", "must be a comma-separated list of host:port"));
        }
        if let Some(s) = servers.iter().find(|s| s.chars().any(char::is_whitespace)) {
            return Err(Error::config("kafka.bootstrap_servers", format!("`{s}` contains whitespace")));
        }
        let minutes10 = Duration::from_secs(600);
        if !(Duration::from_secs(1)..=minutes10).contains(&self.delivery_timeout) {
            return Err(Error::config("kafka.delivery_timeout", "must be between 1 s and 10 min"));
        }
        if !(Duration::from_secs(1)..=self.delivery_timeout).contains(&self.request_timeout) {
            return Err(Error::config("kafka.request_timeout", "must be between 1 s and kafka.delivery_timeout"));
        }
        if !(1..=5).contains(&self.max_in_flight) {
            return Err(Error::config(
                "kafka.max_in_flight",
                "must be between 1 and 5 (the idempotent producer keeps order only up to 5)",
            ));
        }
        if self.linger > Duration::from_secs(900) {
            return Err(Error::config("kafka.linger", "must be at most 900 s"));
        }
        if self.enqueue_timeout > minutes10 {
            return Err(Error::config("kafka.enqueue_timeout", "must be at most 10 min"));
        }
        if self.missing_topic_timeout > minutes10 {
            return Err(Error::config("kafka.missing_topic_timeout", "must be at most 10 min"));
        }
        if self.client_id.is_empty() {
            return Err(Error::config("kafka.client_id", "must not be empty"));
        }
        if let TopicMapping::Prefix(p) = &self.topics
            && let Some(reason) = invalid_topic(&format!("{p}x"))
        {
            return Err(Error::config("kafka.topic_prefix", reason));
        }
        if let Some(name) = self.options.keys().find(|k| FIXED_OPTIONS.contains(&k.as_str())) {
            return Err(Error::config(
                "kafka.options",
                format!("`{name}` is set by the bus (its builder method, or fixed for idempotent delivery)"),
            ));
        }
        Ok(())
    }

    /// Every librdkafka property the producer is created with, in order: the bus's own, then
    /// [`KafkaBusConfig::options`] (which may override only `partitioner`, default
    /// `murmur2_random`). Secrets are included: do not log the result.
    pub fn client_properties(&self) -> Vec<(String, String)> {
        let fixed = [
            ("bootstrap.servers", self.bootstrap_servers.clone()),
            ("client.id", self.client_id.clone()),
            ("enable.idempotence", "true".into()),
            ("acks", "all".into()),
            ("max.in.flight.requests.per.connection", self.max_in_flight.to_string()),
            ("message.timeout.ms", millis(self.delivery_timeout)),
            ("request.timeout.ms", millis(self.request_timeout)),
            ("linger.ms", millis(self.linger)),
            ("allow.auto.create.topics", self.auto_create_topics.to_string()),
            ("topic.metadata.propagation.max.ms", millis(self.missing_topic_timeout.min(self.delivery_timeout))),
            // The Java client's partitioner, so a key lands in the same partition whichever
            // client wrote it; `options` may override it.
            ("partitioner", "murmur2_random".into()),
        ];
        let fixed = fixed.into_iter().map(|(k, v)| (k.to_owned(), v));
        fixed.chain(self.options.iter().map(|(k, v)| (k.clone(), v.clone()))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_are_checked_before_producing() {
        assert_eq!(invalid_topic("events.orders_v2-eu"), None);
        for bad in ["", ".", "..", "a b", "a:b", "a/b", "ü", &"x".repeat(250)] {
            assert!(invalid_topic(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn mappings_build_topics() {
        let msg = OutboxMessage::from_new(outbox_core::NewMessage::new("orders", "x"), 0);
        assert_eq!(TopicMapping::Identity.topic(&msg), "orders");
        assert_eq!(TopicMapping::Prefix("events.".into()).topic(&msg), "events.orders");
        assert_eq!(TopicMapping::custom(|m| format!("{}-v2", m.topic)).topic(&msg), "orders-v2");
    }

    #[test]
    fn bad_settings_name_their_field() {
        let ok = KafkaBusConfig::new("127.0.0.1:9092,127.0.0.1:9093");
        ok.validate().unwrap();
        let cases: [(KafkaBusConfig, &str); 11] = [
            (KafkaBusConfig::default(), "kafka.bootstrap_servers"),
            (KafkaBusConfig::new("a:1, ,b:2"), "kafka.bootstrap_servers"),
            (KafkaBusConfig { delivery_timeout: Duration::ZERO, ..ok.clone() }, "kafka.delivery_timeout"),
            (KafkaBusConfig { request_timeout: Duration::from_secs(11), ..ok.clone() }, "kafka.request_timeout"),
            (KafkaBusConfig { max_in_flight: 6, ..ok.clone() }, "kafka.max_in_flight"),
            (KafkaBusConfig { max_in_flight: 0, ..ok.clone() }, "kafka.max_in_flight"),
            (KafkaBusConfig { linger: Duration::from_secs(901), ..ok.clone() }, "kafka.linger"),
            (KafkaBusConfig { client_id: String::new(), ..ok.clone() }, "kafka.client_id"),
            (
                KafkaBusConfig { missing_topic_timeout: Duration::from_secs(601), ..ok.clone() },
                "kafka.missing_topic_timeout",
            ),
            (KafkaBusConfig { topics: TopicMapping::Prefix("a b.".into()), ..ok.clone() }, "kafka.topic_prefix"),
            (KafkaBusConfig { options: BTreeMap::from([("acks".into(), "1".into())]), ..ok.clone() }, "kafka.options"),
        ];
        for (config, field) in cases {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn the_producer_is_idempotent_and_debug_hides_secrets() {
        let mut c = KafkaBusConfig::new("k:9092");
        c.options.insert("sasl.password".into(), "hunter2".into());
        c.options.insert("compression.type".into(), "lz4".into());
        let props: BTreeMap<_, _> = c.client_properties().into_iter().collect();
        assert_eq!(props["enable.idempotence"], "true");
        assert_eq!(props["acks"], "all");
        assert_eq!(props["max.in.flight.requests.per.connection"], "5");
        assert_eq!(props["message.timeout.ms"], "10000");
        assert_eq!(props["compression.type"], "lz4");
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2") && debug.contains("lz4"), "{debug}");
    }
}
