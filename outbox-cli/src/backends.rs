//! Connecting to the database and the broker, with errors that say which one and where.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use outbox::Retention;
use outbox::sea_orm::{SqlStore, SqlStoreConfig, connect_sqlite};
use sea_orm::{ConnectOptions, Database, DatabaseConnection};

use crate::settings::Common;

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

pub(crate) async fn nats_bus(
    _s: &crate::settings::RelaySettings,
    _relay: &outbox::RelayConfig,
) -> anyhow::Result<crate::commands::relay::BusAndCheck> {
    anyhow::bail!("nats bus: TODO")
}

pub(crate) async fn redis_bus(
    _s: &crate::settings::RelaySettings,
) -> anyhow::Result<crate::commands::relay::BusAndCheck> {
    anyhow::bail!("redis bus: TODO")
}

pub(crate) async fn nats_notifier(_s: &crate::settings::RelaySettings) -> anyhow::Result<Arc<dyn outbox::Notifier>> {
    anyhow::bail!("nats notifier: TODO")
}

pub(crate) async fn redis_notifier(_s: &crate::settings::RelaySettings) -> anyhow::Result<Arc<dyn outbox::Notifier>> {
    anyhow::bail!("redis notifier: TODO")
}
