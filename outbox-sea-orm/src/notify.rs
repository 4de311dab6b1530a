//! [`PgNotifier`]: wake-ups across processes through Postgres `LISTEN`/`NOTIFY`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use outbox_core::{Error, MessageId, Notice, NoticeStream, Notifier, Result};
use sea_orm::sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sea_orm::{DatabaseConnection, DbBackend};

use crate::config::{MAX_CHANNEL_LEN, check_identifier};

/// A [`Notifier`] on Postgres `LISTEN`/`NOTIFY`, so a relay in any process wakes as soon as a
/// writer commits.
///
/// **Sending.** Configure the writers' store with
/// [`SqlStoreConfig::notify_channel`](crate::SqlStoreConfig::notify_channel): enqueue then
/// runs `pg_notify(channel, '')` in the writer's own transaction, in the same statement as the
/// `INSERT`. Postgres delivers it only on commit, and folds repeats within one transaction
/// into one. So [`Notifier::notify`] is a no-op by default; turn on
/// [`PgNotifier::send_on_notify`] only for writers whose store has no channel configured.
///
/// **Listening.** Each [`subscribe`](Notifier::subscribe) opens its own connection (with the
/// connection options of the pool it was made from, outside that pool) and `LISTEN`s on the
/// channel. Every notification becomes [`Notice::Wake`]: the listener claims whatever is due.
/// When the connection drops, sqlx reconnects and listens again, and the stream yields a
/// `Wake` so the listener sweeps anything committed meanwhile; when reconnecting fails, the
/// stream yields the error and ends, and the relay resubscribes with backoff.
///
/// ```no_run
/// # async fn run() -> outbox_core::Result<()> {
/// use std::sync::Arc;
/// use outbox_core::{MemoryBus, Relay};
/// use outbox_sea_orm::{PgNotifier, SqlStore, SqlStoreConfig};
///
/// let db = sea_orm::Database::connect("postgres://postgres@127.0.0.1/app").await.unwrap();
/// let store = Arc::new(SqlStore::new(db.clone(), SqlStoreConfig::default().notify_channel("outbox"))?);
/// let notifier = Arc::new(PgNotifier::new(&db, "outbox")?);
/// let relay = Relay::builder(store, Arc::new(MemoryBus::new())).notifier(notifier).build()?.spawn();
/// # relay.shutdown().await
/// # }
/// ```
#[derive(Clone)]
pub struct PgNotifier {
    options: PgConnectOptions,
    channel: String,
    send_on_notify: bool,
    /// Made on first use: building a pool needs a running Tokio runtime.
    sender: Arc<tokio::sync::OnceCell<PgPool>>,
}

impl fmt::Debug for PgNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgNotifier")
            .field("channel", &self.channel)
            .field("send_on_notify", &self.send_on_notify)
            .finish_non_exhaustive()
    }
}

impl PgNotifier {
    /// Listens on `channel` with the connection settings of `db`, a Postgres connection.
    pub fn new(db: &DatabaseConnection, channel: impl Into<String>) -> Result<Self> {
        if db.get_database_backend() != DbBackend::Postgres {
            return Err(Error::config("notifier.connection", "PgNotifier needs a Postgres connection"));
        }
        let options = (*db.get_postgres_connection_pool().connect_options()).clone();
        Self::with_options(options, channel)
    }

    /// Listens on `channel` of the server at `url` (`postgres://…`).
    pub fn from_url(url: &str, channel: impl Into<String>) -> Result<Self> {
        let options: PgConnectOptions =
            url.parse().map_err(|e| Error::config("notifier.url", format!("is not a valid Postgres URL: {e}")))?;
        Self::with_options(options, channel)
    }

    fn with_options(options: PgConnectOptions, channel: impl Into<String>) -> Result<Self> {
        let channel = channel.into();
        check_identifier("notifier.channel", &channel, MAX_CHANNEL_LEN)?;
        Ok(Self { options, channel, send_on_notify: false, sender: Arc::default() })
    }

    /// Makes [`Notifier::notify`] send `NOTIFY` itself, on a one-connection pool of its own.
    /// Off by default, because a store with
    /// [`notify_channel`](crate::SqlStoreConfig::notify_channel) already notifies inside the
    /// transaction (earlier, and without an extra round trip).
    pub fn send_on_notify(mut self, on: bool) -> Self {
        self.send_on_notify = on;
        self
    }

    /// The channel it listens on.
    pub fn channel(&self) -> &str {
        &self.channel
    }
}

fn listen_error(channel: &str, e: sea_orm::sqlx::Error) -> Error {
    Error::temporary("postgres", format!("LISTEN on channel `{channel}` failed: {e}"), Some(Box::new(e) as _))
}

#[async_trait]
impl Notifier for PgNotifier {
    /// A no-op unless [`PgNotifier::send_on_notify`] is on; never fails the writer.
    async fn notify(&self, ids: &[MessageId]) {
        if !self.send_on_notify || ids.is_empty() {
            return;
        }
        let pool = self
            .sender
            .get_or_init(|| async { PgPoolOptions::new().max_connections(1).connect_lazy_with(self.options.clone()) })
            .await;
        let sent = sea_orm::sqlx::query("SELECT pg_notify($1, '')").bind(&self.channel).execute(pool).await;
        if let Err(e) = sent {
            // A lost notice only costs latency: the fallback sweep publishes the messages.
            tracing::warn!(channel = %self.channel, error = %e, "outbox: NOTIFY failed");
        }
    }

    async fn subscribe(&self) -> Result<NoticeStream> {
        let channel = self.channel.clone();
        // A pool of one, outside the application's pool: the listener holds its connection
        // for as long as it listens, and sqlx reconnects through it.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(self.options.clone())
            .await
            .map_err(|e| listen_error(&channel, e))?;
        let mut listener = PgListener::connect_with(&pool).await.map_err(|e| listen_error(&channel, e))?;
        listener.listen(&channel).await.map_err(|e| listen_error(&channel, e))?;
        tracing::debug!(%channel, "outbox: listening for Postgres notifications");

        let notices = futures::stream::unfold(Some((listener, pool)), move |state| {
            let channel = channel.clone();
            async move {
                let (mut listener, pool) = state?;
                match listener.try_recv().await {
                    Ok(Some(_)) => Some((Ok(Notice::Wake), Some((listener, pool)))),
                    // The connection dropped and sqlx listened again on a new one: notices sent
                    // in between are lost, so wake the listener to sweep.
                    Ok(None) => {
                        tracing::warn!(%channel, "outbox: Postgres listener reconnected");
                        Some((Ok(Notice::Wake), Some((listener, pool))))
                    }
                    Err(e) => Some((Err(listen_error(&channel, e)), None)),
                }
            }
        });
        Ok(Box::pin(notices))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_must_be_a_plain_identifier() {
        let err = PgNotifier::from_url("postgres://localhost/db", "bad channel").unwrap_err();
        assert!(err.to_string().contains("`notifier.channel`"), "{err}");
        let n = PgNotifier::from_url("postgres://localhost/db", "outbox").unwrap();
        assert_eq!(n.channel(), "outbox");
        assert!(format!("{n:?}").contains("outbox"));
    }
}
