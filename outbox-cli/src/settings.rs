//! The optional TOML config file, merged under flags and environment variables, and the
//! validated settings a relay runs with.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use std::collections::BTreeMap;

use outbox::kafka::{KafkaBusConfig, TopicMapping, is_secret_option};
use outbox::nats::{JetStreamConfig, SubjectMapping};
use outbox::redis::{Dedup, RedisBusConfig, StreamMapping};
use outbox::sea_orm::{ClaimMode, SqlStoreConfig};
use outbox::{FallbackConfig, ListenerConfig, RelayConfig, Retention, RetryPolicy};
use serde::{Deserialize, Serialize};

use crate::backends::redact;
use crate::cli::{
    BusKind, ClaimModeArg, Cli, LogFormat, NotifierKind, RedisDedupArg, RelayArgs, RetentionArg, parse_duration,
    parse_url,
};

/// The file's shape; every field optional. Each `[relay]` key is its flag's name with `_` for
/// `-` (`--listener-max-batch` is `listener_max_batch`).
///
/// ```toml
/// database_url = "postgres://postgres@127.0.0.1/test"
/// [relay]
/// bus = "nats"
/// nats_url = "nats://127.0.0.1:4222"
/// interval = "1s"
/// ```
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    database_url: Option<String>,
    table: Option<String>,
    log_format: Option<LogFormat>,
    #[serde(default)]
    relay: FileRelay,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileRelay {
    bus: Option<BusKind>,
    nats_url: Option<String>,
    redis_url: Option<String>,
    kafka_brokers: Option<String>,
    stream: Option<String>,
    prefix: Option<String>,
    notifier: Option<NotifierKind>,
    batch_size: Option<usize>,
    interval: Option<String>,
    min_age: Option<String>,
    claim_ttl: Option<String>,
    max_attempts: Option<u32>,
    retention: Option<RetentionArg>,
    claim_mode: Option<ClaimModeArg>,
    key_partitions: Option<u16>,
    partition_lease_ttl: Option<String>,
    metrics_addr: Option<SocketAddr>,
    health_addr: Option<SocketAddr>,
    dashboard_addr: Option<SocketAddr>,
    shutdown_timeout: Option<String>,
    listener_max_batch: Option<usize>,
    listener_linger: Option<String>,
    listener_concurrency: Option<usize>,
    fallback_concurrency: Option<usize>,
    fallback_stats_interval: Option<String>,
    retry_initial_backoff: Option<String>,
    retry_max_backoff: Option<String>,
    retry_factor: Option<f32>,
    retry_jitter: Option<bool>,
    nats_window: Option<usize>,
    nats_ack_timeout: Option<String>,
    nats_duplicate_window: Option<String>,
    redis_dedup: Option<RedisDedupArg>,
    redis_dedup_window: Option<String>,
    redis_max_len: Option<usize>,
    redis_response_timeout: Option<String>,
    redis_connection_timeout: Option<String>,
    kafka_delivery_timeout: Option<String>,
    kafka_request_timeout: Option<String>,
    kafka_linger: Option<String>,
    kafka_client_id: Option<String>,
    /// librdkafka properties; `--kafka-option` adds to (and overrides) these.
    kafka_options: Option<BTreeMap<String, String>>,
}

/// Settings every command shares.
#[derive(Debug)]
pub(crate) struct Common {
    pub(crate) database_url: Option<String>,
    pub(crate) table: String,
    pub(crate) log_format: LogFormat,
}

/// Relay settings after merging, every one validated before anything is connected.
#[derive(Debug)]
pub(crate) struct RelaySettings {
    pub(crate) bus: BusKind,
    pub(crate) nats_url: String,
    pub(crate) redis_url: String,
    pub(crate) stream: String,
    /// Subject (NATS) or stream-key (Redis) prefix, defaulted for the bus.
    pub(crate) prefix: String,
    pub(crate) notifier: Option<NotifierKind>,
    pub(crate) metrics_addr: Option<SocketAddr>,
    pub(crate) health_addr: Option<SocketAddr>,
    pub(crate) dashboard_addr: Option<SocketAddr>,
    /// From the flag or the environment only: a secret has no place in the file.
    pub(crate) dashboard_token: Option<String>,
    pub(crate) store: SqlStoreConfig,
    pub(crate) relay: RelayConfig,
    /// Used with `--bus nats`.
    pub(crate) nats: JetStreamConfig,
    /// Of the stream the relay creates (`--bus nats`).
    pub(crate) duplicate_window: Duration,
    /// Used with `--bus redis`.
    pub(crate) redis: RedisBusConfig,
    /// Used with `--bus kafka`.
    pub(crate) kafka: KafkaBusConfig,
    // Kept as given, to print them back (`--check`).
    retention: RetentionArg,
    claim_mode: ClaimModeArg,
    redis_dedup: RedisDedupArg,
}

/// Subject prefix (NATS) and stream-key prefix (Redis) unless set.
const NATS_PREFIX: &str = "outbox.";
const REDIS_PREFIX: &str = "outbox:";
/// The CLI asks for Lua dedup (any Redis) rather than the library's default.
const REDIS_DEDUP: RedisDedupArg = RedisDedupArg::Lua;

/// The flags that set each field the libraries validate, so an error says what to change.
/// Each flag's variable is `OUTBOX_` + its name and its file key `relay.` + its name.
const FIELD_FLAGS: &[(&str, &[&str])] = &[
    ("store.key_partitions", &["key-partitions"]),
    ("store.partition_lease_ttl", &["partition-lease-ttl"]),
    ("listener.max_batch", &["listener-max-batch", "batch-size"]),
    ("listener.linger", &["listener-linger"]),
    ("listener.concurrency", &["listener-concurrency"]),
    ("fallback.interval", &["interval"]),
    ("fallback.batch_size", &["batch-size"]),
    ("fallback.concurrency", &["fallback-concurrency"]),
    ("fallback.stats_interval", &["fallback-stats-interval"]),
    ("retry.max_attempts", &["max-attempts"]),
    ("retry.initial_backoff", &["retry-initial-backoff"]),
    ("retry.max_backoff", &["retry-max-backoff"]),
    ("retry.factor", &["retry-factor"]),
    ("relay.claim_ttl", &["claim-ttl"]),
    ("nats.window", &["nats-window"]),
    ("nats.ack_timeout", &["nats-ack-timeout"]),
    ("nats.subject_prefix", &["prefix"]),
    ("redis.stream_prefix", &["prefix"]),
    ("redis.max_len", &["redis-max-len"]),
    ("redis.dedup_window", &["redis-dedup-window"]),
    ("redis.response_timeout", &["redis-response-timeout"]),
    ("redis.connection_timeout", &["redis-connection-timeout"]),
    ("kafka.bootstrap_servers", &["kafka-brokers"]),
    ("kafka.topic_prefix", &["prefix"]),
    ("kafka.delivery_timeout", &["kafka-delivery-timeout"]),
    ("kafka.request_timeout", &["kafka-request-timeout"]),
    ("kafka.linger", &["kafka-linger"]),
    ("kafka.client_id", &["kafka-client-id"]),
    ("kafka.options", &["kafka-option"]),
];

/// A library's configuration error, plus where the bad value can be set.
fn explain(e: outbox::Error) -> anyhow::Error {
    let outbox::Error::Config { field, .. } = &e else { return e.into() };
    if *field == "store.table" {
        return anyhow::anyhow!("{e} (set it with --table / OUTBOX_TABLE / table)");
    }
    let Some((_, flags)) = FIELD_FLAGS.iter().find(|(f, _)| f == field) else { return e.into() };
    let ways: Vec<_> = flags
        .iter()
        .map(|&flag| {
            let key = flag.replace('-', "_");
            match flag {
                "kafka-brokers" => format!("--{flag} / KAFKA_BROKERS / relay.{key}"),
                "kafka-option" => format!("--{flag} NAME=VALUE / relay.kafka_options"),
                _ => format!("--{flag} / OUTBOX_{} / relay.{key}", key.to_uppercase()),
            }
        })
        .collect();
    anyhow::anyhow!("{e} (set it with {})", ways.join(", or "))
}

pub(crate) fn load(path: Option<&Path>) -> anyhow::Result<FileConfig> {
    let Some(path) = path else { return Ok(FileConfig::default()) };
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
    let file: FileConfig =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("invalid config file {}: {e}", path.display()))?;
    if let Some(url) = &file.database_url {
        parse_url(url).map_err(|e| anyhow::anyhow!("{}: database_url: {e}", path.display()))?;
    }
    Ok(file)
}

fn duration(flag: Option<Duration>, file: Option<&str>, name: &str) -> anyhow::Result<Option<Duration>> {
    match (flag, file) {
        (Some(d), _) => Ok(Some(d)),
        (None, Some(s)) => parse_duration(s).map(Some).map_err(|e| anyhow::anyhow!("config file: relay.{name}: {e}")),
        (None, None) => Ok(None),
    }
}

/// `config` with `setter` applied when a value was given.
fn set<C, T>(config: C, value: Option<T>, setter: fn(C, T) -> C) -> C {
    match value {
        Some(v) => setter(config, v),
        None => config,
    }
}

fn show(d: Duration) -> Option<String> {
    Some(humantime::format_duration(d).to_string())
}

impl FileConfig {
    pub(crate) fn common(&self, cli: &Cli) -> Common {
        Common {
            database_url: cli.database_url.clone().or_else(|| self.database_url.clone()),
            table: cli.table.clone().or_else(|| self.table.clone()).unwrap_or_else(|| "outbox_messages".into()),
            log_format: cli.log_format.or(self.log_format).unwrap_or(LogFormat::Human),
        }
    }

    pub(crate) fn relay(&self, args: &RelayArgs, common: &Common) -> anyhow::Result<RelaySettings> {
        let f = &self.relay;
        let nats_url = args.nats_url.clone().or_else(|| f.nats_url.clone());
        let redis_url = args.redis_url.clone().or_else(|| f.redis_url.clone());
        let kafka_brokers = args.kafka_brokers.clone().or_else(|| f.kafka_brokers.clone());
        let bus = args.bus.or(f.bus).unwrap_or(match (&nats_url, &redis_url, &kafka_brokers) {
            (None, Some(_), _) => BusKind::Redis,
            (None, None, Some(_)) => BusKind::Kafka,
            _ => BusKind::Nats,
        });
        for url in [&nats_url, &redis_url].into_iter().flatten() {
            parse_url(url).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let prefix = args.prefix.clone().or_else(|| f.prefix.clone()).unwrap_or_else(|| {
            match bus {
                BusKind::Nats => NATS_PREFIX,
                BusKind::Redis => REDIS_PREFIX,
                BusKind::Kafka => "",
            }
            .to_owned()
        });

        let retention = args.retention.or(f.retention).unwrap_or(RetentionArg::Delete);
        let claim_mode = args.claim_mode.or(f.claim_mode).unwrap_or(ClaimModeArg::Auto);
        let mut store = crate::backends::store_config(
            common,
            match retention {
                RetentionArg::Delete => Retention::Delete,
                RetentionArg::Keep => Retention::KeepPublished,
            },
            None,
        )
        .claim_mode(match claim_mode {
            ClaimModeArg::Auto => ClaimMode::Auto,
            ClaimModeArg::Lease => ClaimMode::Lease,
            ClaimModeArg::Transaction => ClaimMode::Transaction,
        });
        store.key_partitions = args.key_partitions.or(f.key_partitions).unwrap_or(store.key_partitions);
        store.partition_lease_ttl =
            duration(args.partition_lease_ttl, f.partition_lease_ttl.as_deref(), "partition_lease_ttl")?
                .unwrap_or(store.partition_lease_ttl);
        store.validate().map_err(explain)?;

        let relay = self.relay_config(args)?;

        let mut nats = JetStreamConfig::default();
        nats.subjects = SubjectMapping::Prefix(prefix.clone());
        nats.window = args.nats_window.or(f.nats_window).unwrap_or(nats.window);
        // An ack should time out well before the claim expires, or slow acks turn into duplicates.
        nats.ack_timeout = duration(args.nats_ack_timeout, f.nats_ack_timeout.as_deref(), "nats_ack_timeout")?
            .unwrap_or((relay.claim_ttl / 2).min(nats.ack_timeout));
        // Unset: `StreamSpec`'s default.
        let duplicate_window =
            duration(args.nats_duplicate_window, f.nats_duplicate_window.as_deref(), "nats_duplicate_window")?
                .unwrap_or_else(|| outbox::nats::StreamSpec::new("", [""; 0]).duplicate_window);

        let redis_dedup = args.redis_dedup.or(f.redis_dedup).unwrap_or(REDIS_DEDUP);
        let mut redis = RedisBusConfig::default();
        redis.streams = StreamMapping::Prefix(prefix.clone());
        redis.dedup = match redis_dedup {
            RedisDedupArg::Auto => Dedup::Auto,
            RedisDedupArg::Off => Dedup::Off,
            RedisDedupArg::Lua => Dedup::Lua,
            RedisDedupArg::IdmpOrLua => Dedup::IdmpOrLua,
        };
        redis.max_len = args.redis_max_len.or(f.redis_max_len);
        redis.dedup_window = duration(args.redis_dedup_window, f.redis_dedup_window.as_deref(), "redis_dedup_window")?
            .unwrap_or(redis.dedup_window);
        redis.response_timeout =
            duration(args.redis_response_timeout, f.redis_response_timeout.as_deref(), "redis_response_timeout")?
                .unwrap_or(redis.response_timeout);
        redis.connection_timeout =
            duration(args.redis_connection_timeout, f.redis_connection_timeout.as_deref(), "redis_connection_timeout")?
                .unwrap_or(redis.connection_timeout);

        let mut kafka = KafkaBusConfig::new(kafka_brokers.unwrap_or_else(|| "127.0.0.1:9092".into()));
        if !prefix.is_empty() {
            kafka.topics = TopicMapping::Prefix(prefix.clone());
        }
        kafka.delivery_timeout =
            duration(args.kafka_delivery_timeout, f.kafka_delivery_timeout.as_deref(), "kafka_delivery_timeout")?
                .unwrap_or(kafka.delivery_timeout);
        kafka.request_timeout =
            duration(args.kafka_request_timeout, f.kafka_request_timeout.as_deref(), "kafka_request_timeout")?
                .unwrap_or(kafka.request_timeout);
        kafka.linger = duration(args.kafka_linger, f.kafka_linger.as_deref(), "kafka_linger")?.unwrap_or(kafka.linger);
        kafka.client_id = args.kafka_client_id.clone().or_else(|| f.kafka_client_id.clone()).unwrap_or(kafka.client_id);
        kafka.options = f.kafka_options.clone().unwrap_or_default();
        kafka.options.extend(args.kafka_options.iter().cloned());

        // Only the chosen bus: a prefix can suit Redis keys and not NATS subjects.
        match bus {
            BusKind::Nats => nats.validate(),
            BusKind::Redis => redis.validate(),
            BusKind::Kafka => kafka.validate(),
        }
        .map_err(explain)?;

        Ok(RelaySettings {
            bus,
            nats_url: nats_url.unwrap_or_else(|| "nats://127.0.0.1:4222".into()),
            redis_url: redis_url.unwrap_or_else(|| "redis://127.0.0.1:6379".into()),
            stream: args.stream.clone().or_else(|| f.stream.clone()).unwrap_or_else(|| "OUTBOX".into()),
            prefix,
            notifier: args.notifier.or(f.notifier),
            metrics_addr: args.metrics_addr.or(f.metrics_addr),
            health_addr: args.health_addr.or(f.health_addr),
            dashboard_addr: args.dashboard_addr.or(f.dashboard_addr),
            dashboard_token: args.dashboard_token.clone(),
            store,
            relay,
            nats,
            duplicate_window,
            redis,
            kafka,
            retention,
            claim_mode,
            redis_dedup,
        })
    }

    fn relay_config(&self, args: &RelayArgs) -> anyhow::Result<RelayConfig> {
        let f = &self.relay;
        let batch_size = args.batch_size.or(f.batch_size);

        let mut listener = ListenerConfig::default();
        let max_batch = args.listener_max_batch.or(f.listener_max_batch).or(batch_size);
        listener = set(listener, max_batch, ListenerConfig::max_batch);
        let linger = duration(args.listener_linger, f.listener_linger.as_deref(), "listener_linger")?;
        listener = set(listener, linger, ListenerConfig::linger);
        listener = set(listener, args.listener_concurrency.or(f.listener_concurrency), ListenerConfig::concurrency);

        let mut fallback = FallbackConfig::default();
        fallback = set(fallback, batch_size, FallbackConfig::batch_size);
        fallback = set(fallback, duration(args.interval, f.interval.as_deref(), "interval")?, FallbackConfig::interval);
        fallback = set(fallback, duration(args.min_age, f.min_age.as_deref(), "min_age")?, FallbackConfig::min_age);
        fallback = set(fallback, args.fallback_concurrency.or(f.fallback_concurrency), FallbackConfig::concurrency);
        let stats =
            duration(args.fallback_stats_interval, f.fallback_stats_interval.as_deref(), "fallback_stats_interval")?;
        fallback = set(fallback, stats, FallbackConfig::stats_interval);

        let mut retry = RetryPolicy::default();
        retry = set(retry, args.max_attempts.or(f.max_attempts), RetryPolicy::max_attempts);
        let initial =
            duration(args.retry_initial_backoff, f.retry_initial_backoff.as_deref(), "retry_initial_backoff")?;
        let max = duration(args.retry_max_backoff, f.retry_max_backoff.as_deref(), "retry_max_backoff")?;
        let (initial, max) = (initial.unwrap_or(retry.initial_backoff), max.unwrap_or(retry.max_backoff));
        retry = retry.backoff(initial, max);
        retry = set(retry, args.retry_factor.or(f.retry_factor), RetryPolicy::factor);
        retry = set(retry, args.retry_jitter.or(f.retry_jitter), RetryPolicy::jitter);

        let mut config = RelayConfig::default();
        config.listener = Some(listener);
        config.fallback = Some(fallback);
        config.retry = retry;
        if let Some(d) = duration(args.claim_ttl, f.claim_ttl.as_deref(), "claim_ttl")? {
            config.claim_ttl = d;
        }
        if let Some(d) = duration(args.shutdown_timeout, f.shutdown_timeout.as_deref(), "shutdown_timeout")? {
            config.shutdown_timeout = d;
        }
        config.validate().map_err(explain)?;
        Ok(config)
    }
}

impl RelaySettings {
    /// The effective settings as a config file: every value the relay runs with, read back
    /// from the validated configurations (the password of a URL hidden).
    pub(crate) fn to_file(&self, common: &Common) -> FileConfig {
        let listener = self.relay.listener.clone().unwrap_or_default();
        let fallback = self.relay.fallback.clone().unwrap_or_default();
        let retry = &self.relay.retry;
        let mut relay = FileRelay {
            bus: Some(self.bus),
            stream: Some(self.stream.clone()),
            prefix: Some(self.prefix.clone()),
            notifier: self.notifier,
            batch_size: Some(fallback.batch_size),
            interval: show(fallback.interval),
            min_age: show(fallback.min_age),
            claim_ttl: show(self.relay.claim_ttl),
            max_attempts: Some(retry.max_attempts),
            retention: Some(self.retention),
            claim_mode: Some(self.claim_mode),
            key_partitions: Some(self.store.key_partitions),
            partition_lease_ttl: show(self.store.partition_lease_ttl),
            metrics_addr: self.metrics_addr,
            health_addr: self.health_addr,
            dashboard_addr: self.dashboard_addr,
            shutdown_timeout: show(self.relay.shutdown_timeout),
            listener_max_batch: Some(listener.max_batch),
            listener_linger: show(listener.linger),
            listener_concurrency: Some(listener.concurrency),
            fallback_concurrency: Some(fallback.concurrency),
            fallback_stats_interval: show(fallback.stats_interval),
            retry_initial_backoff: show(retry.initial_backoff),
            retry_max_backoff: show(retry.max_backoff),
            retry_factor: Some(retry.factor),
            retry_jitter: Some(retry.jitter),
            ..FileRelay::default()
        };
        match self.bus {
            BusKind::Nats => {
                relay.nats_url = Some(redact(&self.nats_url));
                relay.nats_window = Some(self.nats.window);
                relay.nats_ack_timeout = show(self.nats.ack_timeout);
                relay.nats_duplicate_window = show(self.duplicate_window);
            }
            BusKind::Redis => {
                relay.redis_url = Some(redact(&self.redis_url));
                relay.redis_dedup = Some(self.redis_dedup);
                relay.redis_dedup_window = show(self.redis.dedup_window);
                relay.redis_max_len = self.redis.max_len;
                relay.redis_response_timeout = show(self.redis.response_timeout);
                relay.redis_connection_timeout = show(self.redis.connection_timeout);
            }
            BusKind::Kafka => {
                relay.kafka_brokers = Some(self.kafka.bootstrap_servers.clone());
                relay.kafka_delivery_timeout = show(self.kafka.delivery_timeout);
                relay.kafka_request_timeout = show(self.kafka.request_timeout);
                relay.kafka_linger = show(self.kafka.linger);
                relay.kafka_client_id = Some(self.kafka.client_id.clone());
                // Values of secret-looking names (`sasl.password`, …) are hidden, as in logs.
                let options: BTreeMap<_, _> = self
                    .kafka
                    .options
                    .iter()
                    .map(|(k, v)| (k.clone(), if is_secret_option(k) { "***".to_owned() } else { v.clone() }))
                    .collect();
                relay.kafka_options = (!options.is_empty()).then_some(options);
            }
        }
        FileConfig {
            database_url: common.database_url.as_deref().map(redact),
            table: Some(common.table.clone()),
            log_format: Some(common.log_format),
            relay,
        }
    }
}
