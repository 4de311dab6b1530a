//! Connecting to NATS, with errors that name the server.

use std::time::Duration;

use async_nats::ConnectErrorKind;
use outbox_core::Error;

/// Connects to `url` (e.g. `nats://127.0.0.1:4222`), failing fast with an error that names it.
///
/// A malformed URL is a configuration error (`nats.url`); an unreachable server is temporary.
pub async fn connect(url: &str) -> outbox_core::Result<async_nats::Client> {
    async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(5)).connect(url).await.map_err(|e| match e
        .kind()
    {
        ConnectErrorKind::ServerParse => Error::config("nats.url", format!("`{url}` is not a NATS URL: {e}")),
        ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Tls => {
            Error::permanent("nats", format!("cannot connect to NATS at {url}: {e}"), Some(Box::new(e) as _))
        }
        _ => Error::temporary("nats", format!("cannot reach NATS at {url}: {e}"), Some(Box::new(e) as _)),
    })
}
