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
///
/// With the `otel` feature, a valid W3C `traceparent` (and its `tracestate`, if any) also
/// becomes the span's remote OpenTelemetry parent, so the consumer's span continues the
/// producer's trace. An invalid one, or a subscriber without a `tracing-opentelemetry` layer,
/// leaves the span where it is: a new trace, or a child of the current span.
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
        #[cfg(feature = "otel")]
        otel::continue_trace(&span, tp, delivery.header(otel::HEADER_TRACESTATE));
    }
    span
}

#[cfg(feature = "otel")]
mod otel {
    use std::str::FromStr;

    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    /// The W3C header of vendor trace state that goes with `traceparent`.
    pub(super) const HEADER_TRACESTATE: &str = "tracestate";

    /// Makes the producer's span the remote parent of `span`; must run before `span` is
    /// first entered, since the OpenTelemetry span starts then.
    pub(super) fn continue_trace(span: &tracing::Span, traceparent: &str, tracestate: Option<&str>) {
        let Some(remote) = remote_span_context(traceparent, tracestate) else {
            tracing::debug!(traceparent, "not a valid W3C traceparent; the delivery starts its own trace");
            return;
        };
        // Errs only without an OpenTelemetry layer (or on a disabled span): nothing to link.
        let _ = span.set_parent(opentelemetry::Context::current().with_remote_span_context(remote));
    }

    /// `traceparent` read with the rules of the SDK's `TraceContextPropagator` (not a
    /// dependency here): `version-traceid-parentid-flags` in lowercase hex, version `ff`
    /// refused, extra fields only after version `00`, ids not all zero, flags other than
    /// `sampled` dropped.
    pub(super) fn remote_span_context(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
        let parts: Vec<&str> = traceparent.trim().split('-').collect();
        let lower_hex =
            |s: &str, len: usize| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let [version, trace_id, span_id, flags, ..] = parts[..] else { return None };
        let well_formed = lower_hex(version, 2)
            && lower_hex(trace_id, 32)
            && lower_hex(span_id, 16)
            && lower_hex(flags, 2)
            && version != "ff"
            && (version != "00" || parts.len() == 4);
        if !well_formed {
            return None;
        }
        let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()?) & TraceFlags::SAMPLED;
        let state = tracestate.and_then(|s| TraceState::from_str(s).ok()).unwrap_or_default();
        let cx =
            SpanContext::new(TraceId::from_hex(trace_id).ok()?, SpanId::from_hex(span_id).ok()?, flags, true, state);
        cx.is_valid().then_some(cx)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

        #[test]
        fn a_w3c_traceparent_reads_as_a_sampled_remote_context() {
            let cx = remote_span_context(TP, Some("vendor=abc")).unwrap();
            assert_eq!(cx.trace_id(), TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap());
            assert_eq!(cx.span_id(), SpanId::from_hex("00f067aa0ba902b7").unwrap());
            assert!(cx.is_sampled() && cx.is_remote());
            assert_eq!(cx.trace_state().get("vendor"), Some("abc"));
            let unsampled = remote_span_context(&TP.replace("-01", "-00"), None).unwrap();
            assert!(!unsampled.is_sampled());
            assert!(remote_span_context(&format!("01{}-extra", &TP[2..]), None).is_some(), "a later version");
        }

        #[test]
        fn a_malformed_traceparent_is_no_parent() {
            for tp in [
                "",
                "00-x",
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ] {
                assert!(remote_span_context(tp, None).is_none(), "{tp}");
            }
        }
    }
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
