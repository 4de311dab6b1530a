//! Connecting to Redis and classifying its errors.

use std::time::Duration;

use outbox_core::Error;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Default time to wait for a reply before a command counts as failed (retryable).
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time to wait for a connection.
pub const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a Redis error may succeed later (connection, I/O, timeout, loading, cluster moves).
pub fn is_temporary(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_cluster_error()
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading | redis::ServerErrorKind::TryAgain)
        )
}

/// Maps a Redis error into the outbox error, naming what was being done.
pub fn map_err(what: impl std::fmt::Display, e: redis::RedisError) -> Error {
    if is_temporary(&e) {
        Error::temporary("redis", format!("{what}: {e}"), Some(Box::new(e) as _))
    } else {
        Error::permanent("redis", format!("{what}: {e}"), Some(Box::new(e) as _))
    }
}

/// Opens a [`ConnectionManager`] (reconnects by itself) with explicit timeouts, failing fast
/// with an error that names the URL. A malformed URL is a configuration error (`redis.url`).
pub async fn connect(url: &str) -> outbox_core::Result<ConnectionManager> {
    let client =
        redis::Client::open(url).map_err(|e| Error::config("redis.url", format!("`{url}` is not a Redis URL: {e}")))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(DEFAULT_CONNECTION_TIMEOUT))
        .set_response_timeout(Some(DEFAULT_RESPONSE_TIMEOUT))
        .set_number_of_retries(1);
    client
        .get_connection_manager_with_config(config)
        .await
        .map_err(|e| map_err(format_args!("cannot reach Redis at {url}"), e))
}
