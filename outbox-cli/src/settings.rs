//! The optional TOML config file, merged under flags and environment variables.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::cli::{
    BusKind, ClaimModeArg, Cli, LogFormat, NotifierKind, RelayArgs, RetentionArg, parse_duration, parse_url,
};

/// The file's shape; every field optional.
///
/// ```toml
/// database_url = "postgres://postgres@127.0.0.1/test"
/// [relay]
/// bus = "nats"
/// nats_url = "nats://127.0.0.1:4222"
/// interval = "1s"
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    database_url: Option<String>,
    table: Option<String>,
    log_format: Option<LogFormat>,
    #[serde(default)]
    relay: FileRelay,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRelay {
    bus: Option<BusKind>,
    nats_url: Option<String>,
    redis_url: Option<String>,
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
    metrics_addr: Option<SocketAddr>,
    health_addr: Option<SocketAddr>,
}

/// Settings every command shares.
#[derive(Debug)]
pub(crate) struct Common {
    pub(crate) database_url: Option<String>,
    pub(crate) table: String,
    pub(crate) log_format: LogFormat,
}

/// Relay settings after merging.
#[derive(Debug)]
pub(crate) struct RelaySettings {
    pub(crate) bus: BusKind,
    pub(crate) nats_url: String,
    pub(crate) redis_url: String,
    pub(crate) stream: String,
    pub(crate) prefix: Option<String>,
    pub(crate) notifier: Option<NotifierKind>,
    pub(crate) batch_size: Option<usize>,
    pub(crate) interval: Option<Duration>,
    pub(crate) min_age: Option<Duration>,
    pub(crate) claim_ttl: Option<Duration>,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) retention: RetentionArg,
    pub(crate) claim_mode: ClaimModeArg,
    pub(crate) metrics_addr: Option<SocketAddr>,
    pub(crate) health_addr: Option<SocketAddr>,
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

impl FileConfig {
    pub(crate) fn common(&self, cli: &Cli) -> Common {
        Common {
            database_url: cli.database_url.clone().or_else(|| self.database_url.clone()),
            table: cli.table.clone().or_else(|| self.table.clone()).unwrap_or_else(|| "outbox_messages".into()),
            log_format: cli.log_format.or(self.log_format).unwrap_or(LogFormat::Human),
        }
    }

    pub(crate) fn relay(&self, args: &RelayArgs) -> anyhow::Result<RelaySettings> {
        let f = &self.relay;
        let nats_url = args.nats_url.clone().or_else(|| f.nats_url.clone());
        let redis_url = args.redis_url.clone().or_else(|| f.redis_url.clone());
        let bus = args.bus.or(f.bus).unwrap_or(if nats_url.is_some() || redis_url.is_none() {
            BusKind::Nats
        } else {
            BusKind::Redis
        });
        for url in [&nats_url, &redis_url].into_iter().flatten() {
            parse_url(url).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(RelaySettings {
            bus,
            nats_url: nats_url.unwrap_or_else(|| "nats://127.0.0.1:4222".into()),
            redis_url: redis_url.unwrap_or_else(|| "redis://127.0.0.1:6379".into()),
            stream: args.stream.clone().or_else(|| f.stream.clone()).unwrap_or_else(|| "OUTBOX".into()),
            prefix: args.prefix.clone().or_else(|| f.prefix.clone()),
            notifier: args.notifier.or(f.notifier),
            batch_size: args.batch_size.or(f.batch_size),
            interval: duration(args.interval, f.interval.as_deref(), "interval")?,
            min_age: duration(args.min_age, f.min_age.as_deref(), "min_age")?,
            claim_ttl: duration(args.claim_ttl, f.claim_ttl.as_deref(), "claim_ttl")?,
            max_attempts: args.max_attempts.or(f.max_attempts),
            retention: args.retention.or(f.retention).unwrap_or(RetentionArg::Delete),
            claim_mode: args.claim_mode.or(f.claim_mode).unwrap_or(ClaimModeArg::Auto),
            metrics_addr: args.metrics_addr.or(f.metrics_addr),
            health_addr: args.health_addr.or(f.health_addr),
        })
    }
}
