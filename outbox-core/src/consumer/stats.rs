//! What the runners share: counts, metrics and the guarded, traced handler call.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::FutureExt;
use tracing::Instrument;

use super::metrics::{CONSUMER_DEAD_LETTERED, CONSUMER_DUPLICATES, CONSUMER_PROCESSED, CONSUMER_RETRIED};
use super::{Delivery, Handler, HandlerError, HandlerResult};

/// Counts of a running consumer since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerStats {
    /// Messages handled and acknowledged.
    pub processed: u64,
    /// Deliveries the handler reported as [`Processed::Duplicate`](super::Processed::Duplicate).
    pub duplicates: u64,
    /// Failed deliveries handed back for a later retry.
    pub retried: u64,
    /// Messages moved to the dead-letter subject or stream.
    pub dead_lettered: u64,
}

/// What happened to one delivery, for [`ConsumerCounters::count`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Counted {
    /// Handled and acknowledged.
    Processed,
    /// A duplicate, acknowledged.
    Duplicate,
    /// Handed back for a retry.
    Retried,
    /// Dead-lettered.
    DeadLettered,
}

/// The counters behind [`ConsumerStats`], which also record the metrics.
#[derive(Debug, Default)]
pub struct ConsumerCounters([AtomicU64; 4]);

impl ConsumerCounters {
    /// Counts `what` for `consumer` (the metrics' `consumer` label).
    pub fn count(&self, what: Counted, consumer: &str) {
        let (i, name) = match what {
            Counted::Processed => (0, CONSUMER_PROCESSED),
            Counted::Duplicate => (1, CONSUMER_DUPLICATES),
            Counted::Retried => (2, CONSUMER_RETRIED),
            Counted::DeadLettered => (3, CONSUMER_DEAD_LETTERED),
        };
        self.0[i].fetch_add(1, Ordering::Relaxed);
        metrics::counter!(name, "consumer" => consumer.to_owned()).increment(1);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> ConsumerStats {
        let [processed, duplicates, retried, dead_lettered] = self.0.each_ref().map(|c| c.load(Ordering::Relaxed));
        ConsumerStats { processed, duplicates, retried, dead_lettered }
    }
}

/// The `outbox.consume` span of one delivery: `consumer`, `message_id`, `subject`, `attempt`
/// and the producer's `traceparent` when the message has one.
pub fn delivery_span(consumer: &str, delivery: &Delivery) -> tracing::Span {
    let span = tracing::info_span!(
        "outbox.consume",
        consumer = %consumer,
        message_id = %delivery.id,
        subject = %delivery.subject,
        attempt = delivery.attempt,
        traceparent = tracing::field::Empty,
    );
    if let Some(tp) = delivery.traceparent() {
        span.record("traceparent", tp);
    }
    span
}

/// Runs `handler` in `span`; a panic becomes a retryable [`HandlerError`].
///
/// ```
/// use outbox_core::consumer::{Delivery, Processed, delivery_span, guarded_handle, handler_fn};
///
/// let handler = handler_fn(|_d: Delivery| async move {
///     if true { panic!("bug") }
///     Ok(Processed::Done(()))
/// });
/// let d = Delivery::new("s", "1", Vec::new());
/// let span = delivery_span("c", &d);
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let err = guarded_handle(&handler, d, &span).await.unwrap_err();
/// assert!(err.is_retryable());
/// # });
/// ```
pub async fn guarded_handle<H: Handler + ?Sized>(
    handler: &H,
    delivery: Delivery,
    span: &tracing::Span,
) -> HandlerResult {
    AssertUnwindSafe(handler.handle(delivery))
        .catch_unwind()
        .instrument(span.clone())
        .await
        .unwrap_or_else(|_| Err(HandlerError::retry("the handler panicked")))
}
