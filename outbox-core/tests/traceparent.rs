//! With the `otel` feature, a message made inside a traced span carries its `traceparent`.

use opentelemetry::trace::{TraceContextExt, TracerProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use outbox_core::NewMessage;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

#[test]
fn new_messages_carry_the_current_trace_context() {
    let provider = SdkTracerProvider::builder().build();
    let subscriber =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::with_default(subscriber, || {
        assert!(!NewMessage::new("t", "x").headers.contains_key("traceparent"), "no span, no header");
        let span = tracing::info_span!("register_user");
        let _entered = span.enter();
        let trace_id = span.context().span().span_context().trace_id();
        let msg = NewMessage::new("users.registered", "{}");
        let tp = msg.headers.get("traceparent").expect("traceparent header");
        assert!(tp.starts_with(&format!("00-{trace_id}-")), "{tp}");
        assert_eq!(tp.len(), 55, "version-traceid-spanid-flags");
    });
}
