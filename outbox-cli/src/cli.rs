//! Command-line surface (clap derive). Flags win over environment variables, which win over
//! the optional TOML file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Transactional outbox: standalone relay and operator commands.
#[derive(Debug, Parser)]
#[command(name = "outbox", version, about, propagate_version = true)]
pub(crate) struct Cli {
    /// TOML config file (lowest precedence: flags and environment override it).
    #[arg(long, global = true, env = "OUTBOX_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Database URL: postgres://, mysql:// or sqlite://.
    #[arg(long, global = true, env = "DATABASE_URL", value_parser = parse_url)]
    pub(crate) database_url: Option<String>,
    /// Outbox table name.
    #[arg(long, global = true, env = "OUTBOX_TABLE")]
    pub(crate) table: Option<String>,
    /// Log format.
    #[arg(long, global = true, env = "OUTBOX_LOG_FORMAT", value_enum)]
    pub(crate) log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create or upgrade the outbox table.
    Migrate,
    /// Run the relay (listener + fallback) until SIGINT or SIGTERM, then drain and exit 0.
    Relay(Box<RelayArgs>),
    /// Pending, claimed and dead counts, the oldest pending age and the top keys by backlog.
    Status(StatusArgs),
    /// Inspect, replay and purge dead letters.
    #[command(subcommand)]
    Dead(DeadCommand),
    /// Delete published rows (kept by `--retention keep`) older than a duration, in bounded batches.
    PurgePublished(PurgeArgs),
    /// Serve the operator dashboard: the outbox in a web page, and its JSON API under /api.
    Dashboard(DashboardArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum BusKind {
    Nats,
    Redis,
    Kafka,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum NotifierKind {
    /// Postgres LISTEN/NOTIFY.
    Postgres,
    /// A core-NATS subject.
    Nats,
    /// Redis pub/sub.
    Redis,
    /// Fallback sweeps only.
    None,
}

/// How a claim holds its rows (`outbox_sea_orm::ClaimMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ClaimModeArg {
    /// Transaction on Postgres, lease elsewhere.
    Auto,
    /// A lease written on each claimed row.
    Lease,
    /// Postgres: row locks in a transaction held until the batch settles.
    Transaction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RetentionArg {
    Delete,
    Keep,
}

#[derive(Debug, Args)]
pub(crate) struct RelayArgs {
    /// Broker to publish to (default: nats if NATS_URL is set, else redis if REDIS_URL is,
    /// else kafka if KAFKA_BROKERS is, else nats).
    #[arg(long, env = "OUTBOX_BUS", value_enum)]
    pub(crate) bus: Option<BusKind>,
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", value_parser = parse_url)]
    pub(crate) nats_url: Option<String>,
    /// Redis URL.
    #[arg(long, env = "REDIS_URL", value_parser = parse_url)]
    pub(crate) redis_url: Option<String>,
    /// Kafka bootstrap servers, `host:port[,host:port…]`.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub(crate) kafka_brokers: Option<String>,
    /// JetStream stream to create or check, taking `<prefix>>` (NATS). Empty: streams are
    /// managed elsewhere and not touched.
    #[arg(long, env = "OUTBOX_STREAM")]
    pub(crate) stream: Option<String>,
    /// Prefix put before each topic to make the subject (NATS), stream key (Redis) or Kafka
    /// topic (default `outbox.`, `outbox:`, none).
    #[arg(long, env = "OUTBOX_PREFIX")]
    pub(crate) prefix: Option<String>,
    /// What wakes the listener.
    #[arg(long, env = "OUTBOX_NOTIFIER", value_enum)]
    pub(crate) notifier: Option<NotifierKind>,
    /// Messages per sweep batch, and per listener batch unless --listener-max-batch is set.
    #[arg(long, env = "OUTBOX_BATCH_SIZE")]
    pub(crate) batch_size: Option<usize>,
    /// Time between fallback sweeps, e.g. 1s.
    #[arg(long, env = "OUTBOX_INTERVAL", value_parser = parse_duration)]
    pub(crate) interval: Option<Duration>,
    /// Minimum age before the fallback takes a fresh message, e.g. 2s.
    #[arg(long, env = "OUTBOX_MIN_AGE", value_parser = parse_duration)]
    pub(crate) min_age: Option<Duration>,
    /// Claim lease, e.g. 30s.
    #[arg(long, env = "OUTBOX_CLAIM_TTL", value_parser = parse_duration)]
    pub(crate) claim_ttl: Option<Duration>,
    /// Attempts before dead-lettering.
    #[arg(long, env = "OUTBOX_MAX_ATTEMPTS")]
    pub(crate) max_attempts: Option<u32>,
    /// What completing a message does with its row.
    #[arg(long, env = "OUTBOX_RETENTION", value_enum)]
    pub(crate) retention: Option<RetentionArg>,
    /// How a claim holds its rows until they are settled.
    #[arg(long, env = "OUTBOX_CLAIM_MODE", value_enum)]
    pub(crate) claim_mode: Option<ClaimModeArg>,
    /// Partitions keyed messages are hashed into, shared out among the relays (0: off).
    /// Every writer and relay of a table must agree; default 256.
    #[arg(long, env = "OUTBOX_KEY_PARTITIONS")]
    pub(crate) key_partitions: Option<u16>,
    /// How long a relay's hold on its partitions lasts unrenewed, e.g. 10s: a dead relay's
    /// partitions move within about 1⅓ of it.
    #[arg(long, env = "OUTBOX_PARTITION_LEASE_TTL", value_parser = parse_duration)]
    pub(crate) partition_lease_ttl: Option<Duration>,
    /// Serve Prometheus metrics on this address, e.g. 127.0.0.1:9000.
    #[arg(long, env = "OUTBOX_METRICS_ADDR")]
    pub(crate) metrics_addr: Option<SocketAddr>,
    /// Serve GET /health on this address (database and broker reachability).
    #[arg(long, env = "OUTBOX_HEALTH_ADDR")]
    pub(crate) health_addr: Option<SocketAddr>,
    /// Serve the operator dashboard on this address beside the relay, e.g. 127.0.0.1:8081; its
    /// chart then shows this relay's own published counter.
    #[arg(long, env = "OUTBOX_DASHBOARD_ADDR")]
    pub(crate) dashboard_addr: Option<SocketAddr>,
    /// Token that allows the dashboard's replay and purge (unset: read-only dashboard).
    #[arg(long, env = "OUTBOX_DASHBOARD_TOKEN", hide_env_values = true)]
    pub(crate) dashboard_token: Option<String>,
    /// How long a shutdown waits for in-flight batches, e.g. 10s.
    #[arg(long, env = "OUTBOX_SHUTDOWN_TIMEOUT", value_parser = parse_duration)]
    pub(crate) shutdown_timeout: Option<Duration>,
    /// Validate every setting and print the effective ones as a config file, connecting to
    /// nothing; exit 0, or 2 naming the first bad setting.
    #[arg(long)]
    pub(crate) check: bool,

    /// Most messages per listener batch (default: --batch-size if set, else 256).
    #[arg(long, env = "OUTBOX_LISTENER_MAX_BATCH", help_heading = "Listener")]
    pub(crate) listener_max_batch: Option<usize>,
    /// Wait for more notices before dispatching a partial batch, e.g. 5ms (default 0s).
    #[arg(long, env = "OUTBOX_LISTENER_LINGER", value_parser = parse_duration, help_heading = "Listener")]
    pub(crate) listener_linger: Option<Duration>,
    /// Listener batches in flight (default 4).
    #[arg(long, env = "OUTBOX_LISTENER_CONCURRENCY", help_heading = "Listener")]
    pub(crate) listener_concurrency: Option<usize>,

    /// Sweep batches in parallel (default 2).
    #[arg(long, env = "OUTBOX_FALLBACK_CONCURRENCY", help_heading = "Fallback")]
    pub(crate) fallback_concurrency: Option<usize>,
    /// How often the backlog gauges are counted, e.g. 15s.
    #[arg(long, env = "OUTBOX_FALLBACK_STATS_INTERVAL", value_parser = parse_duration, help_heading = "Fallback")]
    pub(crate) fallback_stats_interval: Option<Duration>,

    /// Delay before the first retry, e.g. 200ms.
    #[arg(long, env = "OUTBOX_RETRY_INITIAL_BACKOFF", value_parser = parse_duration, help_heading = "Retry")]
    pub(crate) retry_initial_backoff: Option<Duration>,
    /// Cap on the retry delay, e.g. 60s.
    #[arg(long, env = "OUTBOX_RETRY_MAX_BACKOFF", value_parser = parse_duration, help_heading = "Retry")]
    pub(crate) retry_max_backoff: Option<Duration>,
    /// Growth of the retry delay per attempt (default 2.0).
    #[arg(long, env = "OUTBOX_RETRY_FACTOR", help_heading = "Retry")]
    pub(crate) retry_factor: Option<f32>,
    /// Randomise retry delays (default true).
    #[arg(long, env = "OUTBOX_RETRY_JITTER", value_name = "BOOL", help_heading = "Retry")]
    pub(crate) retry_jitter: Option<bool>,

    /// Acks in flight per batch (default 256).
    #[arg(long, env = "OUTBOX_NATS_WINDOW", help_heading = "JetStream (--bus nats)")]
    pub(crate) nats_window: Option<usize>,
    /// Wait for one ack before the message is retryable (default: half --claim-ttl, at most 5s).
    #[arg(long, env = "OUTBOX_NATS_ACK_TIMEOUT", value_parser = parse_duration, help_heading = "JetStream (--bus nats)")]
    pub(crate) nats_ack_timeout: Option<Duration>,
    /// Duplicate window of the stream the relay creates (default 10m; an existing stream keeps its own).
    #[arg(long, env = "OUTBOX_NATS_DUPLICATE_WINDOW", value_parser = parse_duration, help_heading = "JetStream (--bus nats)")]
    pub(crate) nats_duplicate_window: Option<Duration>,

    /// Broker-side dedup of redeliveries (default lua).
    #[arg(long, env = "OUTBOX_REDIS_DEDUP", value_enum, help_heading = "Redis Streams (--bus redis)")]
    pub(crate) redis_dedup: Option<RedisDedupArg>,
    /// How long message ids are remembered for dedup, e.g. 10m.
    #[arg(long, env = "OUTBOX_REDIS_DEDUP_WINDOW", value_parser = parse_duration, help_heading = "Redis Streams (--bus redis)")]
    pub(crate) redis_dedup_window: Option<Duration>,
    /// Trim each stream to about this many entries (MAXLEN ~ N; default: no trimming).
    #[arg(long, env = "OUTBOX_REDIS_MAX_LEN", help_heading = "Redis Streams (--bus redis)")]
    pub(crate) redis_max_len: Option<usize>,
    /// Longest wait for a batch's replies, e.g. 5s.
    #[arg(long, env = "OUTBOX_REDIS_RESPONSE_TIMEOUT", value_parser = parse_duration, help_heading = "Redis Streams (--bus redis)")]
    pub(crate) redis_response_timeout: Option<Duration>,
    /// Longest wait for a (re)connection to Redis, e.g. 5s.
    #[arg(long, env = "OUTBOX_REDIS_CONNECTION_TIMEOUT", value_parser = parse_duration, help_heading = "Redis Streams (--bus redis)")]
    pub(crate) redis_connection_timeout: Option<Duration>,

    /// How long librdkafka retries one record before it is retryable for the relay (default 10s;
    /// keep it under half --claim-ttl).
    #[arg(long, env = "OUTBOX_KAFKA_DELIVERY_TIMEOUT", value_parser = parse_duration, help_heading = "Kafka (--bus kafka)")]
    pub(crate) kafka_delivery_timeout: Option<Duration>,
    /// How long one produce request waits for the broker (default 5s).
    #[arg(long, env = "OUTBOX_KAFKA_REQUEST_TIMEOUT", value_parser = parse_duration, help_heading = "Kafka (--bus kafka)")]
    pub(crate) kafka_request_timeout: Option<Duration>,
    /// How long librdkafka waits to fill a produce request (default 5ms).
    #[arg(long, env = "OUTBOX_KAFKA_LINGER", value_parser = parse_duration, help_heading = "Kafka (--bus kafka)")]
    pub(crate) kafka_linger: Option<Duration>,
    /// `client.id` (default outbox).
    #[arg(long, env = "OUTBOX_KAFKA_CLIENT_ID", help_heading = "Kafka (--bus kafka)")]
    pub(crate) kafka_client_id: Option<String>,
    /// Any other librdkafka property as NAME=VALUE (TLS, SASL, compression); repeatable. The
    /// ones the idempotent producer rests on are refused.
    #[arg(long = "kafka-option", value_name = "NAME=VALUE", value_parser = parse_kafka_option, help_heading = "Kafka (--bus kafka)")]
    pub(crate) kafka_options: Vec<(String, String)>,
}

/// `NAME=VALUE`, a librdkafka property.
pub(crate) fn parse_kafka_option(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => Ok((name.trim().to_owned(), value.to_owned())),
        _ => Err(format!("`{s}` is not NAME=VALUE (a librdkafka property, e.g. compression.type=lz4)")),
    }
}

/// Broker-side dedup on Redis (`outbox_redis::Dedup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RedisDedupArg {
    /// IDMP on Redis >= 8.6, else the Lua script.
    Auto,
    /// None: a redelivery after a crash appends a second entry.
    Off,
    /// An atomic Lua script (any Redis).
    Lua,
    /// Same as auto.
    IdmpOrLua,
}

#[derive(Debug, Args)]
pub(crate) struct DashboardArgs {
    /// Address to serve on. Keep it on loopback (the default) or behind a proxy that adds TLS.
    #[arg(long, env = "OUTBOX_DASHBOARD_ADDR", default_value = "127.0.0.1:8081")]
    pub(crate) addr: SocketAddr,
    /// Token that allows replay and purge: as `Authorization: Bearer …` on /api, or through the
    /// page's log-in. Unset: the dashboard is read-only.
    #[arg(long, env = "OUTBOX_DASHBOARD_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// How many keys to list by backlog.
    #[arg(long, default_value_t = 5)]
    pub(crate) top: usize,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DeadCommand {
    /// List dead letters, oldest first.
    List {
        /// Only this topic.
        #[arg(long)]
        topic: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter in full.
    Show {
        /// Message id (UUID).
        id: uuid::Uuid,
    },
    /// Make dead letters pending again (attempts reset).
    Replay {
        /// Message ids (UUIDs).
        #[arg(required_unless_present_any = ["all", "topic"], conflicts_with_all = ["all", "topic"])]
        ids: Vec<uuid::Uuid>,
        /// Every dead letter.
        #[arg(long, conflicts_with = "topic")]
        all: bool,
        /// Every dead letter of this topic.
        #[arg(long)]
        topic: Option<String>,
    },
    /// Delete dead letters that died more than a duration ago.
    Purge {
        /// e.g. 7d, 12h.
        #[arg(long, value_parser = parse_duration)]
        older_than: Duration,
    },
}

#[derive(Debug, Args)]
pub(crate) struct PurgeArgs {
    /// e.g. 7d, 12h.
    #[arg(long, value_parser = parse_duration)]
    pub(crate) older_than: Duration,
    /// Rows deleted per statement.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) batch: u64,
}

/// Durations like `500ms`, `30s`, `7d` (humantime).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}` is not a duration like 500ms, 30s, 7d: {e}"))
}

/// A URL with a scheme we can use.
pub(crate) fn parse_url(s: &str) -> Result<String, String> {
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err(format!("`{s}` is not a URL (expected scheme://host…)"));
    };
    const KNOWN: &[&str] = &["postgres", "postgresql", "mysql", "mariadb", "sqlite", "nats", "tls", "redis", "rediss"];
    if !KNOWN.contains(&scheme) {
        return Err(format!("`{s}`: unsupported scheme `{scheme}` (one of {})", KNOWN.join(", ")));
    }
    if rest.is_empty() {
        return Err(format!("`{s}` has no host or path"));
    }
    Ok(s.to_owned())
}
