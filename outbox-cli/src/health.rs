//! `GET /health`: whether the database and the broker are reachable and the relay's engines run.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use futures::future::BoxFuture;
use outbox::{OutboxStore, RelayHealth};
use serde_json::json;

/// Checks the broker connection; `Err` carries the reason.
pub(crate) type BrokerCheck = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

#[derive(Clone)]
struct Checks {
    store: Arc<dyn OutboxStore>,
    broker: BrokerCheck,
    relay: RelayHealth,
}

async fn health(State(checks): State<Checks>) -> (StatusCode, Json<serde_json::Value>) {
    let database = checks.store.stats().await.map(|_| ()).map_err(|e| e.to_string());
    let broker = (checks.broker)().await;
    let relay = checks.relay.check().map_err(|e| e.to_string());
    let ok = database.is_ok() && broker.is_ok() && relay.is_ok();
    let show = |r: &Result<(), String>| match r {
        Ok(()) => json!({ "ok": true }),
        Err(e) => json!({ "ok": false, "error": e }),
    };
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "ok": ok, "database": show(&database), "broker": show(&broker), "relay": show(&relay) })))
}

/// Serves until the returned task is aborted.
pub(crate) async fn serve(
    addr: SocketAddr,
    store: Arc<dyn OutboxStore>,
    broker: BrokerCheck,
    relay: RelayHealth,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for health checks on {addr}: {e}"))?;
    let app = axum::Router::new().route("/health", get(health)).with_state(Checks { store, broker, relay });
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "health endpoint stopped");
        }
    }))
}
