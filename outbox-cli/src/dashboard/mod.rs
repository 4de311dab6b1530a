//! The operator dashboard: server-rendered pages and a JSON API over the outbox.
//!
//! Served by `outbox dashboard` or beside `/health` by `outbox relay --dashboard-addr`.
//! Every page reads the same views as its `/api` twin; changes need a token (see [`auth`]).
//! The script and stylesheet are compiled into the binary, so the page works offline.

pub(crate) mod api;
pub(crate) mod auth;
pub(crate) mod pages;
pub(crate) mod series;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use outbox::OutboxAdmin;

use self::auth::Auth;
use self::series::Series;

/// The store as the dashboard uses it (stats, key backlog and dead letters).
pub(crate) type Store = Arc<dyn OutboxAdmin>;

/// Everything a handler needs.
#[derive(Clone)]
pub(crate) struct Dashboard {
    pub(crate) store: Store,
    pub(crate) auth: Arc<Auth>,
    pub(crate) series: Arc<Series>,
}

impl Dashboard {
    pub(crate) fn new(store: Store, token: Option<String>, series: Arc<Series>) -> Self {
        Self { store, auth: Arc::new(Auth::new(token)), series }
    }

    /// The dashboard's routes, to serve alone or merge beside others.
    pub(crate) fn router(self) -> Router {
        Router::new()
            .route("/", get(pages::overview))
            .route("/keys", get(pages::keys))
            .route("/dead", get(pages::dead_list))
            .route("/dead/{id}", get(pages::dead_one))
            .route("/dead/{id}/replay", post(pages::replay_one))
            .route("/dead/replay", post(pages::replay_topic))
            .route("/dead/purge", post(pages::purge))
            .route("/login", get(pages::login_form).post(pages::login))
            .route("/logout", post(pages::logout))
            .route("/assets/dashboard.js", get(script))
            .route("/assets/dashboard.css", get(stylesheet))
            .route("/api/stats", get(api::stats))
            .route("/api/series", get(api::series))
            .route("/api/keys", get(api::keys))
            .route("/api/dead", get(api::dead_list))
            .route("/api/dead/{id}", get(api::dead_one))
            .route("/api/dead/{id}/replay", post(api::replay_one))
            .route("/api/dead/replay", post(api::replay_topic))
            .route("/api/dead/purge", post(api::purge))
            .layer(axum::middleware::map_response(security_headers))
            .with_state(self)
    }
}

/// Binds `addr` and serves `app` until the returned task is aborted.
pub(crate) async fn serve(addr: SocketAddr, app: Router) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    // Here rather than in each command, so `relay --dashboard-addr` warns too.
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the dashboard is reachable beyond this machine, over plain HTTP");
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve the dashboard on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "dashboard listening on http://{local}/");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "dashboard stopped");
        }
    }))
}

/// No inline script may run, so a payload that slipped through escaping still could not.
async fn security_headers(mut response: axum::response::Response) -> axum::response::Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Not `no-referrer`: under it a browser sends `Origin: null`, which the origin check refuses.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn script() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], include_str!("assets/dashboard.js"))
}

async fn stylesheet() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], include_str!("assets/dashboard.css"))
}
