//! Connecting to NATS, and async-nats errors mapped into the outbox [`Error`].

use std::time::Duration;

use async_nats::ConnectErrorKind;
use outbox_core::Error;

/// The `backend` every error of this crate names.
pub(crate) const BACKEND: &str = "nats";

/// Connects to `url` (e.g. `nats://127.0.0.1:4222`), failing fast with an error that names it.
///
/// A malformed URL is a configuration error (`nats.url`); refused credentials or TLS are
/// permanent; an unreachable server is temporary. Once connected, the client reconnects on its
/// own after an outage.
pub async fn connect(url: &str) -> outbox_core::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| connect_error(url, e))
}

/// Maps a failed connect to `url`.
fn connect_error(url: &str, e: async_nats::ConnectError) -> Error {
    match e.kind() {
        ConnectErrorKind::ServerParse => Error::config("nats.url", format!("`{url}` is not a NATS URL: {e}")),
        ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Tls => {
            Error::permanent(BACKEND, format!("cannot connect to NATS at {url}: {e}"), Some(Box::new(e) as _))
        }
        _ => Error::temporary(BACKEND, format!("cannot reach NATS at {url}: {e}"), Some(Box::new(e) as _)),
    }
}

#[cfg(feature = "jetstream")]
/// Maps a failed create-or-read of stream `name`: a bad name is configuration, a refusal by
/// JetStream (subjects overlapping another stream, a conflicting config) is permanent, and no
/// answer is temporary.
pub(crate) fn stream_error(name: &str, e: async_nats::jetstream::context::CreateStreamError) -> Error {
    use async_nats::jetstream::context::CreateStreamErrorKind as Kind;
    match e.kind() {
        Kind::EmptyStreamName | Kind::InvalidStreamName => {
            Error::config("nats.stream", format!("`{name}` is not a valid stream name: {e}"))
        }
        Kind::JetStream(_) | Kind::DomainAndExternalSet => {
            Error::permanent(BACKEND, format!("JetStream refused stream `{name}`: {e}"), Some(Box::new(e) as _))
        }
        _ => Error::temporary(BACKEND, format!("cannot create or read stream `{name}`: {e}"), Some(Box::new(e) as _)),
    }
}

/// A temporary failure of `what` (subscribe, flush).
pub(crate) fn temporary<E>(what: impl std::fmt::Display, e: E) -> Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    Error::temporary(BACKEND, format!("{what}: {e}"), Some(Box::new(e) as _))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connect_errors_are_classified_and_name_the_url() {
        let err = connect("nats://127.0.0.1:1").await.unwrap_err();
        assert!(err.is_temporary() && err.to_string().contains("127.0.0.1:1"), "{err}");
        let err = connect("nats://[::1").await.unwrap_err();
        assert!(!err.is_temporary() && err.to_string().contains("nats://[::1"), "{err}");
    }
}
