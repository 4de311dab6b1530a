//! Connecting to Redis and classifying its errors.

use std::time::Duration;

use outbox_core::Error;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::classify::is_retryable_code;
use crate::config::{DEFAULT_CONNECTION_TIMEOUT, DEFAULT_RESPONSE_TIMEOUT};

/// Whether a Redis error may succeed later: connection, I/O, timeout, cluster moves, or a
/// server refusal that passes (`OOM`, `LOADING`, `MISCONF`, …; the list is in the crate docs).
pub fn is_temporary(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_cluster_error()
        || e.code().is_some_and(is_retryable_code)
}

/// Maps a Redis error into the outbox error, naming what was being done.
pub fn map_err(what: impl std::fmt::Display, e: redis::RedisError) -> Error {
    if is_temporary(&e) {
        Error::temporary("redis", format!("{what}: {e}"), Some(Box::new(e) as _))
    } else {
        Error::permanent("redis", format!("{what}: {e}"), Some(Box::new(e) as _))
    }
}

/// A temporary error for a wait that ran out.
pub(crate) fn timed_out(what: impl std::fmt::Display, after: Duration) -> Error {
    Error::temporary("redis", format!("{what}: timed out (no reply within {after:?})"), None)
}

/// Parses a Redis URL; a malformed one is a configuration error (`redis.url`) naming it.
pub(crate) fn client(url: &str) -> outbox_core::Result<redis::Client> {
    redis::Client::open(url).map_err(|e| Error::config("redis.url", format!("`{url}` is not a Redis URL: {e}")))
}

/// Opens a [`ConnectionManager`] (reconnects by itself) with the default 5 s connection and
/// response timeouts; see [`connect_with_timeouts`].
pub async fn connect(url: &str) -> outbox_core::Result<ConnectionManager> {
    connect_with_timeouts(url, DEFAULT_CONNECTION_TIMEOUT, DEFAULT_RESPONSE_TIMEOUT).await
}

/// Opens a [`ConnectionManager`] with explicit timeouts, failing fast with an error that
/// names the URL: unreachable is temporary, a malformed URL is a configuration error
/// (`redis.url`).
pub async fn connect_with_timeouts(
    url: &str,
    connection_timeout: Duration,
    response_timeout: Duration,
) -> outbox_core::Result<ConnectionManager> {
    let client = client(url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(connection_timeout))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(1);
    client
        .get_connection_manager_with_config(config)
        .await
        .map_err(|e| map_err(format_args!("cannot reach Redis at {url}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(reply: &str) -> redis::RedisError {
        crate::classify::server_error(reply).into()
    }

    #[test]
    fn temporary_refusals_map_to_temporary_errors() {
        assert!(map_err("x", server_error("OOM command not allowed when used memory > 'maxmemory'.")).is_temporary());
        assert!(map_err("x", server_error("LOADING Redis is loading the dataset in memory")).is_temporary());
        assert!(!map_err("x", server_error("WRONGTYPE Operation against a key holding the wrong kind")).is_temporary());
    }
}
