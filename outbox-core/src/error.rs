//! Typed, classified errors: retry logic branches on [`Error::is_temporary`], never on strings.

use crate::message::MessageId;

/// A boxed error from a backend driver, kept as the `source` of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result with the outbox [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the outbox.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of range; names the field and what is allowed.
    #[error("invalid configuration: `{field}` {reason}")]
    Config {
        /// The offending field, e.g. `listener.max_batch`.
        field: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// A message was rejected before it was written.
    #[error("invalid message {id}: {reason}")]
    InvalidMessage {
        /// The message's id.
        id: MessageId,
        /// Why it was rejected.
        reason: String,
    },
    /// A payload could not be encoded.
    #[error("could not encode payload: {message}")]
    Encode {
        /// What failed.
        message: String,
        /// The codec's error.
        #[source]
        source: Option<BoxError>,
    },
    /// The outbox table (or stream) does not exist.
    #[error("{backend}: the outbox table `{table}` does not exist; run the outbox migration first")]
    MissingSchema {
        /// Which backend noticed.
        backend: &'static str,
        /// The table name that was expected.
        table: String,
    },
    /// A backend (database, broker, notifier) failed.
    #[error("{backend}: {message}")]
    Backend {
        /// Which backend failed, e.g. `postgres` or `nats`.
        backend: &'static str,
        /// What failed.
        message: String,
        /// Whether trying again later may succeed.
        temporary: bool,
        /// The driver error.
        #[source]
        source: Option<BoxError>,
    },
    /// A message id that the store does not hold.
    #[error("no message with id {0}")]
    NotFound(MessageId),
    /// A relay engine stopped on its own (it panicked): that path no longer publishes.
    #[error("the relay's {engine} engine stopped: {reason}")]
    EngineStopped {
        /// `listener` or `fallback`.
        engine: &'static str,
        /// Why, e.g. the panic message.
        reason: String,
    },
    /// Graceful shutdown did not finish before its deadline.
    #[error("shutdown did not finish within {0:?}; in-flight claims will expire and be retried")]
    ShutdownTimeout(std::time::Duration),
}

impl Error {
    /// A configuration error for `field`.
    pub fn config(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Config { field, reason: reason.into() }
    }

    /// A rejected message.
    pub fn invalid_message(id: MessageId, reason: impl Into<String>) -> Self {
        Self::InvalidMessage { id, reason: reason.into() }
    }

    /// An encoding failure, keeping the codec's error as its source.
    pub fn encode(message: impl Into<String>, source: impl Into<Option<BoxError>>) -> Self {
        Self::Encode { message: message.into(), source: source.into() }
    }

    /// A temporary backend failure (connection lost, timeout): retrying may succeed.
    pub fn temporary(backend: &'static str, message: impl Into<String>, source: impl Into<Option<BoxError>>) -> Self {
        Self::Backend { backend, message: message.into(), temporary: true, source: source.into() }
    }

    /// A permanent backend failure: retrying will not help.
    pub fn permanent(backend: &'static str, message: impl Into<String>, source: impl Into<Option<BoxError>>) -> Self {
        Self::Backend { backend, message: message.into(), temporary: false, source: source.into() }
    }

    /// Whether retrying later may succeed.
    pub fn is_temporary(&self) -> bool {
        matches!(self, Self::Backend { temporary: true, .. } | Self::ShutdownTimeout(_))
    }
}
