//! `/api`: the JSON behind every page, and the mutations (bearer token, or a session plus
//! `X-CSRF-Token`).

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use outbox::{DeadLetter, DeadLetterQuery, MessageId, ReplaySelector};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::series::{Point, Source};
use super::{Dashboard, Store};
use crate::cli::parse_duration;

/// Most dead letters or keys one request lists.
pub(crate) const MAX_LIMIT: usize = 1000;

/// A failed request, as JSON or as a page.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }
}

impl From<outbox::Error> for Failure {
    fn from(e: outbox::Error) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}"))
    }
}

impl From<super::auth::Denied> for Failure {
    fn from(d: super::auth::Denied) -> Self {
        Self::new(d.status(), d.message())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct StatsView {
    pub(crate) pending: u64,
    pub(crate) claimed: u64,
    pub(crate) dead: u64,
    pub(crate) oldest_pending_age_seconds: Option<f64>,
    pub(crate) read_only: bool,
}

pub(crate) async fn load_stats(d: &Dashboard) -> Result<StatsView, Failure> {
    let s = d.store.stats().await?;
    Ok(StatsView {
        pending: s.pending,
        claimed: s.claimed,
        dead: s.dead,
        oldest_pending_age_seconds: s.oldest_pending_age.map(|a| a.as_secs_f64()),
        read_only: d.auth.read_only(),
    })
}

#[derive(Debug, Serialize)]
pub(crate) struct KeyView {
    pub(crate) key: String,
    pub(crate) pending: u64,
}

pub(crate) async fn load_keys(store: &Store, limit: usize) -> Result<Vec<KeyView>, Failure> {
    let keys = store.key_backlog(limit.clamp(1, MAX_LIMIT)).await?;
    Ok(keys.into_iter().map(|(key, pending)| KeyView { key, pending }).collect())
}

#[derive(Debug, Serialize)]
pub(crate) struct DeadView {
    pub(crate) id: String,
    pub(crate) topic: String,
    pub(crate) key: Option<String>,
    pub(crate) attempts: u32,
    pub(crate) last_error: Option<String>,
    pub(crate) created_at_ms: i64,
    pub(crate) dead_at_ms: i64,
    pub(crate) payload_bytes: usize,
}

impl From<&DeadLetter> for DeadView {
    fn from(d: &DeadLetter) -> Self {
        let m = &d.message;
        Self {
            id: m.id.to_string(),
            topic: m.topic.clone(),
            key: m.key.clone(),
            attempts: m.attempts,
            last_error: m.last_error.clone(),
            created_at_ms: m.created_at,
            dead_at_ms: d.dead_at,
            payload_bytes: m.payload.len(),
        }
    }
}

/// How a payload is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PayloadKind {
    /// Valid JSON, pretty-printed.
    Json,
    /// UTF-8 text as it is.
    Text,
    /// Neither: only its size.
    Binary,
}

#[derive(Debug, Serialize)]
pub(crate) struct DeadDetail {
    #[serde(flatten)]
    pub(crate) summary: DeadView,
    pub(crate) headers: outbox::Headers,
    pub(crate) payload_kind: PayloadKind,
    /// The payload as shown: pretty JSON, the text, or a note on its size.
    pub(crate) payload: String,
}

impl From<DeadLetter> for DeadDetail {
    fn from(d: DeadLetter) -> Self {
        let summary = DeadView::from(&d);
        let bytes = &d.message.payload;
        let (payload_kind, payload) = match std::str::from_utf8(bytes) {
            Ok(text) => match serde_json::from_str::<serde_json::Value>(text) {
                Ok(v) => (PayloadKind::Json, serde_json::to_string_pretty(&v).unwrap_or_else(|_| text.to_owned())),
                Err(_) => (PayloadKind::Text, text.to_owned()),
            },
            Err(_) => (PayloadKind::Binary, format!("{} bytes of binary data", bytes.len())),
        };
        Self { summary, headers: d.message.headers, payload_kind, payload }
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    pub(crate) topic: Option<String>,
    pub(crate) limit: Option<usize>,
}

impl ListQuery {
    pub(crate) fn topic(&self) -> Option<String> {
        self.topic.as_deref().map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned)
    }
}

pub(crate) async fn load_dead(store: &Store, q: &ListQuery) -> Result<Vec<DeadView>, Failure> {
    let query =
        DeadLetterQuery { topic: q.topic(), limit: q.limit.unwrap_or(100).clamp(1, MAX_LIMIT), ..Default::default() };
    Ok(store.dead_letters(&query).await?.iter().map(DeadView::from).collect())
}

pub(crate) fn parse_id(id: &str) -> Result<MessageId, Failure> {
    id.parse().map_err(|_| Failure::new(StatusCode::BAD_REQUEST, format!("`{id}` is not a message id (UUID)")))
}

pub(crate) async fn find_dead(store: &Store, id: MessageId) -> Result<DeadLetter, Failure> {
    let query = DeadLetterQuery { ids: vec![id], limit: 1, ..Default::default() };
    store
        .dead_letters(&query)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| Failure::new(StatusCode::NOT_FOUND, format!("no dead letter with id {id}")))
}

/// Replays one dead letter; 404 when it is not dead.
pub(crate) async fn do_replay_one(store: &Store, id: MessageId) -> Result<u64, Failure> {
    find_dead(store, id).await?;
    Ok(store.replay(&ReplaySelector::Ids(vec![id])).await?)
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ReplayQuery {
    pub(crate) topic: Option<String>,
    /// `true`: every dead letter of every topic.
    pub(crate) all: Option<bool>,
}

pub(crate) async fn do_replay_topic(store: &Store, q: &ReplayQuery) -> Result<u64, Failure> {
    let topic = q.topic.as_deref().map(str::trim).filter(|t| !t.is_empty());
    let selector = match (topic, q.all) {
        (Some(t), _) => ReplaySelector::Topic(t.to_owned()),
        (None, Some(true)) => ReplaySelector::All,
        _ => return Err(Failure::new(StatusCode::BAD_REQUEST, "name a topic (topic=…) or ask for all=true")),
    };
    Ok(store.replay(&selector).await?)
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct PurgeQuery {
    /// e.g. `7d`; `0s` purges every dead letter.
    pub(crate) older_than: Option<String>,
}

impl PurgeQuery {
    /// The age, which has no default: a purge always names it.
    pub(crate) fn older_than(&self) -> Result<Duration, Failure> {
        let text = self.older_than.as_deref().map(str::trim).unwrap_or_default();
        if text.is_empty() {
            return Err(Failure::new(
                StatusCode::BAD_REQUEST,
                "older_than is required, e.g. 7d (0s: every dead letter)",
            ));
        }
        parse_duration(text).map_err(|e| Failure::new(StatusCode::BAD_REQUEST, e))
    }
}

pub(crate) async fn do_purge(store: &Store, q: &PurgeQuery) -> Result<(u64, Duration), Failure> {
    let older_than = q.older_than()?;
    Ok((store.purge_dead(older_than).await?, older_than))
}

/// What a purge would delete, for the page that asks before purging.
#[derive(Debug)]
pub(crate) struct PurgePreview {
    pub(crate) older_than: Duration,
    /// Dead letters old enough among the first [`MAX_LIMIT`].
    pub(crate) count: usize,
    /// More dead letters exist than were looked at, so `count` is a lower bound.
    pub(crate) at_least: bool,
}

pub(crate) async fn preview_purge(store: &Store, q: &PurgeQuery) -> Result<PurgePreview, Failure> {
    let older_than = q.older_than()?;
    // The store's purge takes the same cutoff from this process's clock.
    let millis = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
    let cutoff = outbox::message::now_millis().saturating_sub(millis);
    let listed = store.dead_letters(&DeadLetterQuery { limit: MAX_LIMIT, ..Default::default() }).await?;
    let count = listed.iter().filter(|d| d.dead_at <= cutoff).count();
    Ok(PurgePreview { older_than, count, at_least: listed.len() == MAX_LIMIT })
}

pub(crate) async fn stats(State(d): State<Dashboard>) -> Result<Json<StatsView>, Failure> {
    Ok(Json(load_stats(&d).await?))
}

#[derive(Debug, Serialize)]
pub(crate) struct SeriesView {
    source: Source,
    description: &'static str,
    points: Vec<Point>,
}

pub(crate) async fn series(State(d): State<Dashboard>) -> Json<SeriesView> {
    Json(SeriesView { source: d.series.source, description: d.series.source.describe(), points: d.series.points() })
}

pub(crate) async fn keys(State(d): State<Dashboard>, Query(q): Query<ListQuery>) -> Result<impl IntoResponse, Failure> {
    Ok(Json(load_keys(&d.store, q.limit.unwrap_or(20)).await?))
}

pub(crate) async fn dead_list(
    State(d): State<Dashboard>,
    Query(q): Query<ListQuery>,
) -> Result<impl IntoResponse, Failure> {
    Ok(Json(load_dead(&d.store, &q).await?))
}

pub(crate) async fn dead_one(State(d): State<Dashboard>, Path(id): Path<String>) -> Result<impl IntoResponse, Failure> {
    Ok(Json(DeadDetail::from(find_dead(&d.store, parse_id(&id)?).await?)))
}

pub(crate) async fn replay_one(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, Failure> {
    d.auth.authorize(&headers, None)?;
    let n = do_replay_one(&d.store, parse_id(&id)?).await?;
    tracing::info!(%id, "dashboard: replayed a dead letter");
    Ok(Json(json!({ "replayed": n })))
}

pub(crate) async fn replay_topic(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Query(q): Query<ReplayQuery>,
) -> Result<impl IntoResponse, Failure> {
    d.auth.authorize(&headers, None)?;
    let n = do_replay_topic(&d.store, &q).await?;
    tracing::info!(topic = ?q.topic, all = ?q.all, replayed = n, "dashboard: replayed dead letters");
    Ok(Json(json!({ "replayed": n })))
}

pub(crate) async fn purge(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Query(q): Query<PurgeQuery>,
) -> Result<impl IntoResponse, Failure> {
    d.auth.authorize(&headers, None)?;
    let (n, older_than) = do_purge(&d.store, &q).await?;
    tracing::info!(purged = n, older_than = %humantime::format_duration(older_than), "dashboard: purged dead letters");
    Ok(Json(json!({ "purged": n })))
}
