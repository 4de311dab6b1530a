//! With the `otel` feature, a delivery's span continues the producer's trace: its
//! `traceparent` becomes the remote OpenTelemetry parent of `outbox.consume`.
#![cfg(feature = "otel")]

use std::sync::{Arc, Mutex};

use opentelemetry::trace::{SpanId, TraceId, TracerProvider};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use outbox_core::NewMessage;
use outbox_core::consumer::{Delivery, Processed, delivery_span, guarded_handle, handler_fn};
use tracing_subscriber::layer::SubscriberExt;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

/// Keeps every finished span (the SDK's in-memory exporter needs its `testing` feature).
#[derive(Clone, Debug, Default)]
struct Recorded(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Recorded {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().unwrap().extend(batch);
        Ok(())
    }
}

impl Recorded {
    fn named(&self, name: &str) -> Vec<SpanData> {
        self.0.lock().unwrap().iter().filter(|s| s.name == name).cloned().collect()
    }
}

/// Handles `delivery` under a tracing-opentelemetry subscriber; returns the exported spans and
/// the `traceparent` of a message the handler produced.
fn consume(delivery: Delivery) -> (Recorded, Option<String>) {
    let recorded = Recorded::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(recorded.clone()).build();
    let subscriber =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let produced = Arc::new(Mutex::new(None));
    let out = produced.clone();
    let handler = handler_fn(move |_d: Delivery| {
        let out = out.clone();
        async move {
            let _child = tracing::info_span!("handler.work").entered();
            *out.lock().unwrap() = NewMessage::new("next", "x").headers.get("traceparent").cloned();
            Ok(Processed::Done(()))
        }
    });
    tracing::subscriber::with_default(subscriber, || {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let span = delivery_span("shipping", &delivery);
        let done = runtime.block_on(guarded_handle(&handler, delivery, &span)).unwrap();
        assert!(matches!(done, Processed::Done(())));
    });
    provider.force_flush().unwrap();
    let produced = produced.lock().unwrap().clone();
    (recorded, produced)
}

fn delivery(traceparent: Option<&str>) -> Delivery {
    let d = Delivery::new("orders", "1-0", b"{}".to_vec());
    match traceparent {
        Some(tp) => d.with_header("traceparent", tp),
        None => d,
    }
}

#[test]
fn the_consume_span_is_a_child_of_the_producers_span() {
    let (recorded, produced) = consume(delivery(Some(&format!("00-{TRACE_ID}-{PARENT_ID}-01"))));
    let spans = recorded.named("outbox.consume");
    assert_eq!(spans.len(), 1, "one exported consume span");
    let consume = &spans[0];
    assert_eq!(consume.span_context.trace_id(), TraceId::from_hex(TRACE_ID).unwrap());
    assert_eq!(consume.parent_span_id, SpanId::from_hex(PARENT_ID).unwrap());
    assert!(consume.parent_span_is_remote);
    assert!(consume.attributes.iter().any(|kv| kv.key.as_str() == "traceparent"), "still a field");

    // The handler's spans, and what it publishes, stay in the producer's trace.
    let work = &recorded.named("handler.work")[0];
    assert_eq!(work.span_context.trace_id(), consume.span_context.trace_id());
    assert_eq!(work.parent_span_id, consume.span_context.span_id());
    let produced = produced.expect("the handler's message carries a traceparent");
    assert!(produced.starts_with(&format!("00-{TRACE_ID}-{}-", work.span_context.span_id())), "{produced}");
}

#[test]
fn without_a_valid_traceparent_the_delivery_starts_its_own_trace() {
    let bad = format!("00-{}-{PARENT_ID}-01", TRACE_ID.to_uppercase());
    for tp in [None, Some("garbage"), Some(bad.as_str())] {
        let (recorded, _) = consume(delivery(tp));
        let spans = recorded.named("outbox.consume");
        assert_eq!(spans.len(), 1, "{tp:?}");
        assert_eq!(spans[0].parent_span_id, SpanId::INVALID, "{tp:?}: a root span");
        assert_ne!(spans[0].span_context.trace_id(), TraceId::from_hex(TRACE_ID).unwrap(), "{tp:?}");
    }
}
