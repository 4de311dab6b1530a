//! What a consumer runs per message and what it reports back.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;

use async_trait::async_trait;
use serde::de::DeserializeOwned;

use super::Delivery;
use crate::error::BoxError;

/// The outcome of an exactly-once step: the work ran and committed, or the message had been
/// processed before and the work was skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Processed<T> {
    /// The work ran; its effects and the message id were committed together.
    Done(T),
    /// The message id was already recorded: the work did not run.
    Duplicate,
}

impl<T> Processed<T> {
    /// Whether the message was a duplicate.
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Self::Duplicate)
    }

    /// The work's value, `None` for a duplicate.
    pub fn done(self) -> Option<T> {
        match self {
            Self::Done(v) => Some(v),
            Self::Duplicate => None,
        }
    }

    /// Maps the work's value.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Processed<U> {
        match self {
            Self::Done(v) => Processed::Done(f(v)),
            Self::Duplicate => Processed::Duplicate,
        }
    }
}

/// Why a handler failed, and whether another delivery may succeed.
///
/// ```
/// use outbox_core::consumer::HandlerError;
///
/// let e = HandlerError::retry("database unavailable");
/// assert!(e.is_retryable());
/// let e = HandlerError::reject("unknown order 7");
/// assert!(!e.is_retryable());
/// assert_eq!(e.to_string(), "unknown order 7");
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct HandlerError {
    message: String,
    retryable: bool,
    #[source]
    source: Option<BoxError>,
}

impl HandlerError {
    /// A failure that a later delivery may not have (a lost connection, a lock timeout): the
    /// message is redelivered after a back-off, and dead-lettered after the last attempt.
    pub fn retry(message: impl Into<String>) -> Self {
        Self { message: message.into(), retryable: true, source: None }
    }

    /// A failure that no delivery will fix (a payload that does not parse, a message the
    /// handler refuses): the message is dead-lettered at once.
    pub fn reject(message: impl Into<String>) -> Self {
        Self { message: message.into(), retryable: false, source: None }
    }

    /// A retryable failure caused by `err`; its text becomes the message.
    pub fn retry_from(err: impl Into<BoxError>) -> Self {
        let err = err.into();
        Self { message: err.to_string(), retryable: true, source: Some(err) }
    }

    /// A rejection caused by `err`; its text becomes the message.
    pub fn reject_from(err: impl Into<BoxError>) -> Self {
        let err = err.into();
        Self { message: err.to_string(), retryable: false, source: Some(err) }
    }

    /// Whether a later delivery may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

/// What a [`Handler`] returns.
pub type HandlerResult = Result<Processed<()>, HandlerError>;

/// The work a consumer runner does per message. Implement it, or build one from a closure
/// with [`handler_fn`] or, for JSON payloads, [`json_handler`].
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Handles one delivery. `Ok` acknowledges it ([`Processed::Duplicate`] is counted as a
    /// duplicate); a retryable error redelivers it later; a rejection dead-letters it.
    async fn handle(&self, delivery: Delivery) -> HandlerResult;
}

/// A [`Handler`] made of a closure; see [`handler_fn`].
#[derive(Clone)]
pub struct HandlerFn<F>(F);

impl<F> fmt::Debug for HandlerFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HandlerFn")
    }
}

/// A [`Handler`] that calls `f` with each delivery.
///
/// ```
/// use outbox_core::consumer::{Delivery, Handler, Processed, handler_fn};
///
/// let handler = handler_fn(|d: Delivery| async move {
///     assert_eq!(d.payload, b"hi");
///     Ok(Processed::Done(()))
/// });
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let out = handler.handle(Delivery::new("s", "1", b"hi".to_vec())).await.unwrap();
/// assert_eq!(out, Processed::Done(()));
/// # });
/// ```
pub fn handler_fn<F, Fut>(f: F) -> HandlerFn<F>
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send,
{
    HandlerFn(f)
}

#[async_trait]
impl<F, Fut> Handler for HandlerFn<F>
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send,
{
    async fn handle(&self, delivery: Delivery) -> HandlerResult {
        (self.0)(delivery).await
    }
}

/// A typed [`Handler`]: see [`json_handler`].
pub struct Json<T, F> {
    f: F,
    _payload: PhantomData<fn() -> T>,
}

impl<T, F> fmt::Debug for Json<T, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Json<{}>", std::any::type_name::<T>())
    }
}

/// A [`Handler`] that decodes each JSON payload into `T` and calls `f` with it and the
/// delivery. A payload that does not decode is rejected (dead-lettered), with the serde error
/// and the target type in the message.
///
/// ```
/// use outbox_core::consumer::{Delivery, Handler, Processed, json_handler};
///
/// #[derive(serde::Deserialize)]
/// struct Order { id: u64 }
///
/// let handler = json_handler(|order: Order, _d: Delivery| async move {
///     assert_eq!(order.id, 7);
///     Ok(Processed::Done(()))
/// });
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// assert!(handler.handle(Delivery::new("s", "1", br#"{"id":7}"#.to_vec())).await.is_ok());
/// let err = handler.handle(Delivery::new("s", "2", b"not json".to_vec())).await.unwrap_err();
/// assert!(!err.is_retryable());
/// assert!(err.to_string().contains("does not decode as"), "{err}");
/// # });
/// ```
pub fn json_handler<T, F, Fut>(f: F) -> Json<T, F>
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(T, Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send,
{
    Json { f, _payload: PhantomData }
}

#[async_trait]
impl<T, F, Fut> Handler for Json<T, F>
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(T, Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send,
{
    async fn handle(&self, delivery: Delivery) -> HandlerResult {
        let value = serde_json::from_slice::<T>(&delivery.payload).map_err(|e| HandlerError {
            message: format!(
                "payload of message {} does not decode as {}: {e}",
                delivery.id,
                std::any::type_name::<T>()
            ),
            retryable: false,
            source: Some(Box::new(e)),
        })?;
        (self.f)(value, delivery).await
    }
}
