//! Connecting to the database and the broker, with errors that say which one and where.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use outbox::redis::redis;
use outbox::sea_orm::{SqlStore, SqlStoreConfig, connect_sqlite};
use outbox::{Bus, Notifier, Retention};
use sea_orm::{ConnectOptions, Database, DatabaseConnection};

use crate::health::BrokerCheck;
use crate::settings::{Common, RelaySettings};

/// A bus and how to check that its broker is reachable.
pub(crate) type BusAndCheck = (Arc<dyn Bus>, BrokerCheck);

/// `scheme://user:secret@host` → `scheme://user:***@host`, for messages and logs.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

pub(crate) async fn connect_db(common: &Common) -> anyhow::Result<DatabaseConnection> {
    let url = common
        .database_url
        .as_deref()
        .context("no database: set DATABASE_URL, --database-url or database_url in the config file")?;
    let shown = redact(url);
    if let Some(path) = url.strip_prefix("sqlite://") {
        let path = path.split('?').next().unwrap_or(path);
        return connect_sqlite(path).await.with_context(|| format!("cannot open the SQLite database at {shown}"));
    }
    let mut options = ConnectOptions::new(url.to_owned());
    options.connect_timeout(Duration::from_secs(5)).acquire_timeout(Duration::from_secs(5)).sqlx_logging(false);
    Database::connect(options).await.with_context(|| format!("cannot reach the database at {shown}"))
}

pub(crate) fn store_config(common: &Common, retention: Retention, notify_channel: Option<&str>) -> SqlStoreConfig {
    let config = SqlStoreConfig::default().table(common.table.clone()).retention(retention);
    match notify_channel {
        Some(c) => config.notify_channel(c),
        None => config,
    }
}

pub(crate) async fn store(common: &Common) -> anyhow::Result<Arc<SqlStore>> {
    let db = connect_db(common).await?;
    Ok(Arc::new(SqlStore::new(db, store_config(common, Retention::Delete, None))?))
}

const NATS_NOTIFY_SUBJECT: &str = "outbox.notify";
const REDIS_NOTIFY_CHANNEL: &str = "outbox:notify";

pub(crate) async fn nats_bus(s: &RelaySettings) -> anyhow::Result<BusAndCheck> {
    let client = outbox::nats::connect(&s.nats_url).await?;
    let bus = outbox::nats::JetStreamBus::builder(client.clone()).config(s.nats.clone()).build()?;
    // An empty stream name means the streams are managed elsewhere.
    if !s.stream.is_empty() {
        // `for_relay` makes a new stream's window long enough and warns about an existing one
        // that keeps less: the relay still works, redeliveries may just escape dedup.
        let spec = outbox::nats::StreamSpec::new(&s.stream, [format!("{}>", s.prefix)])
            .duplicate_window(s.duplicate_window)
            .for_relay(&s.relay);
        outbox::nats::ensure_stream(bus.context(), &spec)
            .await
            .with_context(|| format!("cannot set up JetStream stream `{}` at {}", s.stream, redact(&s.nats_url)))?;
    }
    let streams = bus.clone();
    let check: BrokerCheck = Arc::new(move || {
        let up = client.connection_state() == outbox::nats::async_nats::connection::State::Connected;
        // A missing stream is retried, not dead-lettered at once: health is where it shows.
        let result =
            if !up { Err("NATS is disconnected".to_owned()) } else { streams.health().map_err(|e| e.to_string()) };
        Box::pin(async move { result })
    });
    Ok((Arc::new(bus), check))
}

pub(crate) async fn redis_bus(s: &RelaySettings) -> anyhow::Result<BusAndCheck> {
    let conn = outbox::redis::connect_with_timeouts(&s.redis_url, s.redis.connection_timeout, s.redis.response_timeout)
        .await?;
    let bus = outbox::redis::RedisStreamsBus::builder(conn.clone()).config(s.redis.clone()).build().await?;
    let check: BrokerCheck = Arc::new(move || {
        let mut conn = conn.clone();
        Box::pin(async move {
            redis::cmd("PING").query_async::<String>(&mut conn).await.map(|_| ()).map_err(|e| format!("Redis: {e}"))
        })
    });
    Ok((Arc::new(bus), check))
}

pub(crate) async fn kafka_bus(s: &RelaySettings) -> anyhow::Result<BusAndCheck> {
    let bus = outbox::kafka::KafkaBus::builder(&s.kafka.bootstrap_servers).config(s.kafka.clone()).build()?;
    // Fail start-up, like the other buses, when no broker answers.
    bus.check(Duration::from_secs(5)).await?;
    let probe = bus.clone();
    let check: BrokerCheck = Arc::new(move || {
        let probe = probe.clone();
        Box::pin(async move { probe.check(Duration::from_secs(2)).await.map_err(|e| e.to_string()) })
    });
    Ok((Arc::new(bus), check))
}

pub(crate) async fn nats_notifier(s: &RelaySettings) -> anyhow::Result<Arc<dyn Notifier>> {
    let client = outbox::nats::connect(&s.nats_url).await?;
    Ok(Arc::new(outbox::nats::NatsNotifier::new(client, NATS_NOTIFY_SUBJECT)?))
}

pub(crate) async fn redis_notifier(s: &RelaySettings) -> anyhow::Result<Arc<dyn Notifier>> {
    Ok(Arc::new(outbox::redis::RedisNotifier::connect(&s.redis_url, REDIS_NOTIFY_CHANNEL).await?))
}
