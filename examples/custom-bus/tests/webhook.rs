//! The webhook bus against a local HTTP server that records requests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use custom_bus::WebhookBus;
use outbox::testkit::bus::{BusFixture, BusProbe, Received};
use outbox::testkit::eventually;
use outbox::{
    Bus, FallbackConfig, MemoryStore, NewMessage, OutboxAdmin, OutboxMessage, OutboxStore, PublishOutcome, Relay,
    RetryPolicy,
};

#[derive(Clone, Default)]
struct Recorder {
    received: Arc<Mutex<Vec<Received>>>,
    flaky_calls: Arc<AtomicUsize>,
    throttled_calls: Arc<AtomicUsize>,
}

/// Answers by the payload prefix: `400`, `503`, `slow`, `flaky` (503 twice, then 200),
/// `429` (with `Retry-After: 1`), `408` (no `Retry-After`), `throttled` (429 + `Retry-After: 1`
/// once, then 200).
async fn hook(State(rec): State<Recorder>, headers: HeaderMap, body: Bytes) -> (StatusCode, HeaderMap) {
    let mut answer = HeaderMap::new();
    let status = match body.as_ref() {
        b if b.starts_with(b"400") => StatusCode::BAD_REQUEST,
        b if b.starts_with(b"429") => {
            answer.insert("retry-after", "1".parse().unwrap());
            StatusCode::TOO_MANY_REQUESTS
        }
        b if b.starts_with(b"408") => StatusCode::REQUEST_TIMEOUT,
        b if b.starts_with(b"throttled") && rec.throttled_calls.fetch_add(1, Ordering::SeqCst) == 0 => {
            answer.insert("retry-after", "1".parse().unwrap());
            StatusCode::TOO_MANY_REQUESTS
        }
        b if b.starts_with(b"503") => StatusCode::SERVICE_UNAVAILABLE,
        b if b.starts_with(b"slow") => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            StatusCode::OK
        }
        b if b.starts_with(b"flaky") && rec.flaky_calls.fetch_add(1, Ordering::SeqCst) < 2 => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::OK,
    };
    if status.is_success() {
        let headers =
            headers.iter().filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned()))).collect();
        rec.received.lock().unwrap().push(Received { payload: body.to_vec(), headers });
    }
    (status, answer)
}

async fn server() -> (String, Recorder) {
    let rec = Recorder::default();
    let app = axum::Router::new().route("/hook", axum::routing::post(hook)).with_state(rec.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, rec)
}

fn stored(m: NewMessage) -> OutboxMessage {
    OutboxMessage::from_new(m, 0)
}

#[tokio::test]
async fn status_codes_map_to_outcomes() {
    let (url, rec) = server().await;
    let bus = WebhookBus::new(url, Duration::from_secs(1)).unwrap();
    let batch: Vec<_> = ["ok", "400", "503", "slow", "429", "408"]
        .into_iter()
        .map(|p| stored(NewMessage::new("t", p).key("k")))
        .collect();
    let outcomes = bus.publish(&batch).await;
    assert_eq!(outcomes[0], PublishOutcome::Published);
    assert!(matches!(&outcomes[1], PublishOutcome::Permanent(r) if r.contains("400")), "{:?}", outcomes[1]);
    assert!(matches!(&outcomes[2], PublishOutcome::Retryable(r) if r.contains("503")), "{:?}", outcomes[2]);
    assert!(matches!(&outcomes[3], PublishOutcome::Retryable(_)), "a timeout is retryable: {:?}", outcomes[3]);
    assert!(
        matches!(&outcomes[4], PublishOutcome::RetryAfter { delay, error } if *delay == Duration::from_secs(1) && error.contains("429")),
        "429 is throttling, retried after Retry-After: {:?}",
        outcomes[4]
    );
    assert!(matches!(&outcomes[5], PublishOutcome::Retryable(r) if r.contains("408")), "{:?}", outcomes[5]);
    let got = rec.received.lock().unwrap().clone();
    assert_eq!(got[0].headers["outbox-message-id"], batch[0].id.to_string());
    assert_eq!(got[0].headers["outbox-key"], "k");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_retries_5xx_and_dead_letters_4xx() {
    let (url, rec) = server().await;
    let store = Arc::new(MemoryStore::new());
    let bus = Arc::new(WebhookBus::new(url, Duration::from_secs(2)).unwrap());
    let relay = Relay::builder(store.clone(), bus)
        .fallback(FallbackConfig::default().min_age(Duration::ZERO).interval(Duration::from_millis(20)))
        .retry(RetryPolicy::default().backoff(Duration::from_millis(10), Duration::from_millis(50)))
        .build()
        .unwrap()
        .spawn();
    store.enqueue(vec![NewMessage::new("t", "flaky"), NewMessage::new("t", "400 never")]).await.unwrap();
    let dead = eventually("the 4xx message to be dead-lettered", Duration::from_secs(10), || {
        let store = store.clone();
        async move { store.dead_letters(&Default::default()).await.unwrap().into_iter().next() }
    })
    .await;
    eventually("the flaky message to be delivered", Duration::from_secs(10), || {
        let store = store.clone();
        async move { (store.stats().await.unwrap().pending == 0).then_some(()) }
    })
    .await;
    relay.shutdown().await.unwrap();
    assert!(dead.message.last_error.unwrap().contains("400"));
    assert_eq!(dead.message.attempts, 1);
    let got = rec.received.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "delivered once");
    assert_eq!(rec.flaky_calls.load(Ordering::SeqCst), 3, "two 503s, then 200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_waits_out_retry_after_and_then_delivers() {
    let (url, rec) = server().await;
    let store = Arc::new(MemoryStore::new());
    let bus = Arc::new(WebhookBus::new(url, Duration::from_secs(2)).unwrap());
    let relay = Relay::builder(store.clone(), bus)
        .fallback(FallbackConfig::default().min_age(Duration::ZERO).interval(Duration::from_millis(20)))
        .retry(RetryPolicy::default().max_attempts(2).backoff(Duration::from_millis(10), Duration::from_millis(50)))
        .build()
        .unwrap()
        .spawn();
    store.enqueue(vec![NewMessage::new("t", "throttled")]).await.unwrap();
    eventually("the throttled message to be delivered", Duration::from_secs(10), || {
        let store = store.clone();
        async move { (store.stats().await.unwrap().pending == 0).then_some(()) }
    })
    .await;
    relay.shutdown().await.unwrap();
    assert_eq!(store.stats().await.unwrap().dead, 0, "throttling is not a poison message");
    assert_eq!(rec.throttled_calls.load(Ordering::SeqCst), 2, "one 429, then 200");
    assert_eq!(rec.received.lock().unwrap().len(), 1);
}

struct Probe(Recorder);

#[async_trait]
impl BusProbe for Probe {
    async fn received(&self, _topic: &str, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.0.received.lock().unwrap().len() < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // HTTP lowercases header names; give them back their outbox spelling.
        let names = ["Outbox-Message-Id", "Outbox-Key", "Outbox-Topic"];
        self.0
            .received
            .lock()
            .unwrap()
            .iter()
            .map(|r| Received {
                payload: r.payload.clone(),
                headers: r
                    .headers
                    .iter()
                    .map(|(k, v)| {
                        let name =
                            names.iter().find(|n| n.eq_ignore_ascii_case(k)).map_or(k.clone(), |n| (*n).to_owned());
                        (name, v.clone())
                    })
                    .collect(),
            })
            .collect()
    }
}

async fn setup() -> BusFixture {
    let (url, rec) = server().await;
    BusFixture {
        bus: Arc::new(WebhookBus::new(url, Duration::from_secs(5)).unwrap()),
        topic: "hook".into(),
        probe: Box::new(Probe(rec)),
    }
}

outbox::bus_conformance!(setup);
