//! The HTML pages (maud escapes every value) and the form actions behind their buttons.

use std::time::{Duration, UNIX_EPOCH};

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use super::Dashboard;
use super::api::{self, DeadDetail, Failure, ListQuery, PurgeQuery, ReplayQuery};
use super::auth::{self, Session};
use super::series::Source;

/// What a page needs to know about the viewer.
struct Viewer {
    read_only: bool,
    session: Option<Session>,
}

impl Viewer {
    fn of(d: &Dashboard, headers: &HeaderMap) -> Self {
        Self { read_only: d.auth.read_only(), session: d.auth.session(headers) }
    }

    /// The CSRF token for forms, when the viewer may change data.
    fn csrf(&self) -> Option<&str> {
        self.session.as_ref().map(|s| s.csrf.as_str())
    }
}

fn layout(viewer: &Viewer, title: &str, active: &str, notice: Option<&str>, body: Markup) -> Markup {
    let nav = [("/", "Overview"), ("/keys", "Keys"), ("/dead", "Dead letters")];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · outbox" }
                link rel="stylesheet" href="/assets/dashboard.css";
                script src="/assets/dashboard.js" defer {}
            }
            body {
                header {
                    span.brand { "outbox" }
                    nav {
                        @for (href, label) in nav {
                            a href=(href) class=[(active == href).then_some("active")] { (label) }
                        }
                    }
                    span.who {
                        @if viewer.read_only {
                            span.badge.ro { "read-only" }
                        } @else if let Some(csrf) = viewer.csrf() {
                            form.inline method="post" action="/logout" {
                                input type="hidden" name="csrf" value=(csrf);
                                button.link type="submit" { "Log out" }
                            }
                        } @else {
                            a href="/login" { "Log in" }
                        }
                    }
                }
                main {
                    @if viewer.read_only {
                        p #read-only .notice.warn {
                            "Read-only: no token is configured (--token / OUTBOX_DASHBOARD_TOKEN), so replay and \
                             purge are disabled."
                        }
                    }
                    @if let Some(n) = notice {
                        p #notice .notice { (n) }
                    }
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

fn error_page(viewer: &Viewer, f: &Failure) -> Response {
    let page = layout(viewer, "Error", "", None, html! { p #error .notice.error { (f.message) } });
    (f.status, page).into_response()
}

fn time(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

fn age(seconds: Option<f64>) -> String {
    seconds.map_or_else(|| "–".to_owned(), |s| humantime::format_duration(Duration::from_secs(s as u64)).to_string())
}

/// Cuts long text for a table cell (the full text is on the message's page).
fn short(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct PageQuery {
    topic: Option<String>,
    limit: Option<usize>,
    notice: Option<String>,
}

pub(crate) async fn overview(State(d): State<Dashboard>, headers: HeaderMap, Query(q): Query<PageQuery>) -> Response {
    let viewer = Viewer::of(&d, &headers);
    let (stats, keys) = match (api::load_stats(&d).await, api::load_keys(&d.store, OVERVIEW_KEYS).await) {
        (Ok(s), Ok(k)) => (s, k),
        (Err(f), _) | (_, Err(f)) => return error_page(&viewer, &f),
    };
    let source = match d.series.source {
        Source::Relay => "relay",
        Source::Database => "database",
    };
    let body = html! {
        section.cards {
            div.card { span.label { "Pending" } span #stat-pending .figure { (stats.pending) } }
            div.card { span.label { "Claimed" } span #stat-claimed .figure { (stats.claimed) } }
            div.card { span.label { "Dead" } span #stat-dead .figure { (stats.dead) } }
            div.card {
                span.label { "Oldest pending" }
                span #stat-oldest .figure data-seconds=[stats.oldest_pending_age_seconds] { (age(stats.oldest_pending_age_seconds)) }
            }
        }
        section #chart data-source=(source) {
            h2 { "Published per second" }
            svg #chart-published .chart viewBox="0 0 600 120" role="img" aria-label="published per second" {}
            h2 { "Pending" }
            svg #chart-pending .chart viewBox="0 0 600 120" role="img" aria-label="pending messages" {}
            p #chart-note .note { "Last " (super::series::KEEP / 60) " minutes, updated every second. " (d.series.source.describe()) }
        }
        section {
            h2 { "Top keys by backlog" }
            (keys_table(&keys, OVERVIEW_KEYS))
            p { a href="/keys" { "All keys by backlog →" } }
        }
    };
    layout(&viewer, "Overview", "/", q.notice.as_deref(), body).into_response()
}

/// Keys the overview lists.
const OVERVIEW_KEYS: usize = 10;

/// The keys by backlog; the script refreshes it from `/api/keys?limit=…` every 2 s, so the
/// table and the empty note are both always there, one of them hidden.
fn keys_table(keys: &[api::KeyView], limit: usize) -> Markup {
    html! {
        div #keys-live data-limit=(limit) {
            p #no-keys .empty hidden[!keys.is_empty()] { "No pending messages with a key." }
            table #keys hidden[keys.is_empty()] {
                thead { tr { th { "Key" } th.num { "Pending" } } }
                tbody {
                    @for k in keys {
                        tr { td { code { (k.key) } } td.num { (k.pending) } }
                    }
                }
            }
            p.note { "Updated every 2 seconds." }
        }
    }
}

pub(crate) async fn keys(State(d): State<Dashboard>, headers: HeaderMap, Query(q): Query<PageQuery>) -> Response {
    let viewer = Viewer::of(&d, &headers);
    let limit = q.limit.unwrap_or(50).clamp(1, api::MAX_LIMIT);
    match api::load_keys(&d.store, limit).await {
        Ok(keys) => {
            let body = html! {
                p.note { "Keys with the most pending messages (a dead letter blocks its key until replayed or purged)." }
                (keys_table(&keys, limit))
            };
            layout(&viewer, "Keys by backlog", "/keys", q.notice.as_deref(), body).into_response()
        }
        Err(f) => error_page(&viewer, &f),
    }
}

fn replay_button(csrf: &str, id: &str, topic: Option<&str>) -> Markup {
    html! {
        form.inline method="post" action={ "/dead/" (id) "/replay" } {
            input type="hidden" name="csrf" value=(csrf);
            @if let Some(t) = topic { input type="hidden" name="back_topic" value=(t); }
            button #{ "replay-" (id) } type="submit" { "Replay" }
        }
    }
}

pub(crate) async fn dead_list(State(d): State<Dashboard>, headers: HeaderMap, Query(q): Query<PageQuery>) -> Response {
    let viewer = Viewer::of(&d, &headers);
    let list = ListQuery { topic: q.topic.clone(), limit: q.limit };
    let topic = list.topic();
    let dead = match api::load_dead(&d.store, &list).await {
        Ok(dead) => dead,
        Err(f) => return error_page(&viewer, &f),
    };
    let body = html! {
        form.filter method="get" action="/dead" {
            label { "Topic " input type="text" name="topic" value=[topic.as_deref()] placeholder="any"; }
            button type="submit" { "Filter" }
        }
        @if dead.is_empty() {
            p.empty #no-dead { "No dead letters" @if let Some(t) = &topic { " in topic " code { (t) } } "." }
        } @else {
            table #dead {
                thead { tr { th { "Id" } th { "Topic" } th { "Key" } th.num { "Attempts" } th { "Last error" } th { "Dead since" } th {} } }
                tbody {
                    @for m in &dead {
                        tr data-id=(m.id) {
                            td { a href={ "/dead/" (m.id) } { code { (m.id) } } }
                            td { (m.topic) }
                            td { @if let Some(k) = &m.key { code { (k) } } }
                            td.num { (m.attempts) }
                            td.error { (short(m.last_error.as_deref().unwrap_or("–"), 120)) }
                            td { (time(m.dead_at_ms)) }
                            td { @if let Some(csrf) = viewer.csrf() { (replay_button(csrf, &m.id, topic.as_deref())) } }
                        }
                    }
                }
            }
        }
        @if let Some(csrf) = viewer.csrf() {
            section.actions {
                form method="post" action="/dead/replay" {
                    input type="hidden" name="csrf" value=(csrf);
                    label { "Replay every dead letter of topic " input #replay-topic type="text" name="topic" required value=[topic.as_deref()]; }
                    button #replay-topic-button type="submit" { "Replay topic" }
                }
                form method="post" action="/dead/purge" {
                    input type="hidden" name="csrf" value=(csrf);
                    label { "Delete dead letters that died more than " input #purge-older-than type="text" name="older_than" required value="7d"; " ago (0s: all)" }
                    button #purge-button .danger type="submit" { "Purge" }
                }
            }
        } @else if !viewer.read_only {
            p.note { a href="/login" { "Log in" } " to replay or purge." }
        }
    };
    layout(&viewer, "Dead letters", "/dead", q.notice.as_deref(), body).into_response()
}

pub(crate) async fn dead_one(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Response {
    let viewer = Viewer::of(&d, &headers);
    let found = match api::parse_id(&id) {
        Ok(id) => api::find_dead(&d.store, id).await,
        Err(f) => Err(f),
    };
    let m = match found {
        Ok(dead) => DeadDetail::from(dead),
        Err(f) => return error_page(&viewer, &f),
    };
    let s = &m.summary;
    let body = html! {
        table.fields #message {
            tr { th { "Id" } td { code { (s.id) } } }
            tr { th { "Topic" } td #topic { (s.topic) } }
            tr { th { "Key" } td { @if let Some(k) = &s.key { code { (k) } } @else { "–" } } }
            tr { th { "Attempts" } td { (s.attempts) } }
            tr { th { "Enqueued" } td { (time(s.created_at_ms)) } }
            tr { th { "Dead since" } td { (time(s.dead_at_ms)) } }
            tr { th { "Payload" } td { (s.payload_bytes) " bytes" } }
        }
        h2 { "Last error" }
        pre #last-error { (s.last_error.as_deref().unwrap_or("–")) }
        h2 { "Payload" @if m.payload_kind == api::PayloadKind::Json { " (JSON)" } }
        pre #payload { (m.payload) }
        @if !m.headers.is_empty() {
            h2 { "Headers" }
            table #headers { @for (k, v) in &m.headers { tr { th { code { (k) } } td { code { (v) } } } } }
        }
        @if let Some(csrf) = viewer.csrf() {
            section.actions { (replay_button(csrf, &s.id, None)) }
        } @else if !viewer.read_only {
            p.note { a href="/login" { "Log in" } " to replay it." }
        }
        p { a href={ "/dead?topic=" (encode(&s.topic)) } { "← Dead letters of " (s.topic) } }
    };
    layout(&viewer, "Dead letter", "/dead", q.notice.as_deref(), body).into_response()
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ActionForm {
    csrf: Option<String>,
    back_topic: Option<String>,
    topic: Option<String>,
    older_than: Option<String>,
    /// `yes` on the purge confirmation page's button; without it a purge only asks.
    confirm: Option<String>,
}

/// Back to the dead letters (of `topic`), saying what was done.
fn back(topic: Option<&str>, notice: &str) -> Response {
    let mut to = format!("/dead?notice={}", encode(notice));
    if let Some(t) = topic.filter(|t| !t.is_empty()) {
        to.push_str(&format!("&topic={}", encode(t)));
    }
    Redirect::to(&to).into_response()
}

pub(crate) async fn replay_one(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<ActionForm>,
) -> Response {
    let viewer = Viewer::of(&d, &headers);
    if let Err(denied) = d.auth.authorize(&headers, f.csrf.as_deref()) {
        return error_page(&viewer, &denied.into());
    }
    let result = match api::parse_id(&id) {
        Ok(id) => api::do_replay_one(&d.store, id).await,
        Err(f) => Err(f),
    };
    match result {
        Ok(n) => {
            tracing::info!(%id, "dashboard: replayed a dead letter");
            back(f.back_topic.as_deref(), &format!("Replayed {n} dead letter ({id}): it is pending again."))
        }
        Err(failure) => error_page(&viewer, &failure),
    }
}

pub(crate) async fn replay_topic(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Form(f): Form<ActionForm>,
) -> Response {
    let viewer = Viewer::of(&d, &headers);
    if let Err(denied) = d.auth.authorize(&headers, f.csrf.as_deref()) {
        return error_page(&viewer, &denied.into());
    }
    // The form names a topic; "all topics" stays an API call (`all=true`), to be deliberate.
    let q = ReplayQuery { topic: f.topic.clone(), all: None };
    match api::do_replay_topic(&d.store, &q).await {
        Ok(n) => {
            let topic = f.topic.as_deref().unwrap_or_default().trim();
            tracing::info!(topic, replayed = n, "dashboard: replayed dead letters");
            back(Some(topic), &format!("Replayed {n} dead letter(s) of topic {topic}."))
        }
        Err(failure) => error_page(&viewer, &failure),
    }
}

pub(crate) async fn purge(State(d): State<Dashboard>, headers: HeaderMap, Form(f): Form<ActionForm>) -> Response {
    let viewer = Viewer::of(&d, &headers);
    if let Err(denied) = d.auth.authorize(&headers, f.csrf.as_deref()) {
        return error_page(&viewer, &denied.into());
    }
    let q = PurgeQuery { older_than: f.older_than.clone() };
    // The list's Purge button only asks: a stray click deletes nothing.
    if f.confirm.as_deref() != Some("yes") {
        return match api::preview_purge(&d.store, &q).await {
            Ok(preview) => confirm_purge(&viewer, f.older_than.as_deref().unwrap_or_default(), &preview),
            Err(failure) => error_page(&viewer, &failure),
        };
    }
    match api::do_purge(&d.store, &q).await {
        Ok((n, older_than)) => {
            let older = humantime::format_duration(older_than).to_string();
            tracing::info!(purged = n, older_than = %older, "dashboard: purged dead letters");
            back(None, &format!("Purged {n} dead letter(s) that died more than {older} ago."))
        }
        Err(failure) => error_page(&viewer, &failure),
    }
}

/// Says what a purge would delete and asks again, with Cancel beside the button.
fn confirm_purge(viewer: &Viewer, older_than: &str, p: &api::PurgePreview) -> Response {
    let older = humantime::format_duration(p.older_than).to_string();
    // Only the first MAX_LIMIT were looked at, in enqueue order, not by age.
    let count = match (p.at_least, p.count) {
        (false, n) => n.to_string(),
        (true, 0) => "an unknown number of".to_owned(),
        (true, n) => format!("at least {n}"),
    };
    let body = html! {
        @if p.count == 0 && !p.at_least {
            p #purge-summary .notice { "No dead letter died more than " (older) " ago: there is nothing to purge." }
            p { a #purge-cancel href="/dead" { "← Dead letters" } }
        } @else {
            p #purge-summary .notice.warn {
                "This deletes " (count) " dead letter(s) that died more than " (older) " ago, for good."
            }
            form method="post" action="/dead/purge" {
                input type="hidden" name="csrf" value=(viewer.csrf().unwrap_or_default());
                input type="hidden" name="older_than" value=(older_than);
                input type="hidden" name="confirm" value="yes";
                button #purge-confirm .danger type="submit" { "Delete " (count) " dead letter(s)" }
                " "
                a #purge-cancel href="/dead" { "Cancel" }
            }
        }
    };
    layout(viewer, "Purge dead letters?", "/dead", None, body).into_response()
}

pub(crate) async fn login_form(State(d): State<Dashboard>, headers: HeaderMap) -> Response {
    let viewer = Viewer::of(&d, &headers);
    login_page(&viewer, StatusCode::OK, None)
}

fn login_page(viewer: &Viewer, status: StatusCode, error: Option<&str>) -> Response {
    let body = html! {
        @if viewer.read_only {
            p.note { "There is nothing to log in to: this dashboard has no token and only shows the outbox." }
        } @else {
            @if let Some(e) = error { p #error .notice.error { (e) } }
            form #login method="post" action="/login" {
                label { "Token " input #token type="password" name="token" autocomplete="current-password" required autofocus; }
                button #login-button type="submit" { "Log in" }
            }
            p.note { "The token given to the dashboard with --token or OUTBOX_DASHBOARD_TOKEN. Logging in sets an \
                      HttpOnly, SameSite=Strict session cookie for 12 hours." }
        }
    };
    (status, layout(viewer, "Log in", "", None, body)).into_response()
}

#[derive(Debug, Deserialize)]
pub(crate) struct LoginForm {
    token: String,
}

pub(crate) async fn login(State(d): State<Dashboard>, headers: HeaderMap, Form(f): Form<LoginForm>) -> Response {
    let viewer = Viewer::of(&d, &headers);
    if viewer.read_only {
        return error_page(&viewer, &auth::Denied::ReadOnly.into());
    }
    if let Err(denied) = auth::same_origin(&headers) {
        return error_page(&viewer, &denied.into());
    }
    if !d.auth.token_matches(&f.token) {
        tracing::warn!("dashboard: failed login");
        return login_page(&viewer, StatusCode::UNAUTHORIZED, Some("Wrong token."));
    }
    match d.auth.login() {
        Ok(id) => ([(header::SET_COOKIE, auth::session_cookie(&id))], Redirect::to("/")).into_response(),
        Err(e) => error_page(&viewer, &Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

pub(crate) async fn logout(State(d): State<Dashboard>, headers: HeaderMap) -> Response {
    if let Err(denied) = auth::same_origin(&headers) {
        return error_page(&Viewer::of(&d, &headers), &denied.into());
    }
    d.auth.logout(&headers);
    ([(header::SET_COOKIE, auth::cleared_cookie())], Redirect::to("/")).into_response()
}
