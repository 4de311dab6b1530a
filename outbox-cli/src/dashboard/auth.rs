//! Who may change data: a bearer token (API clients) or a login session (the HTML forms),
//! with CSRF and cross-origin checks on every mutation.
//!
//! - No token configured: read-only, every mutation answers 403.
//! - `Origin` must name this host and `Sec-Fetch-Site` (when sent) must be `same-origin` or
//!   `none`, else 403, whatever the credentials.
//! - `Authorization: Bearer <token>`: allowed when the token matches, 401 when it does not.
//!   Browsers never add this header on their own, so it needs no CSRF token.
//! - The session cookie (HttpOnly, SameSite=Strict, set by `POST /login`): allowed only with the
//!   session's CSRF token in the form (`csrf`) or the `X-CSRF-Token` header, else 403.
//! - Nothing: 401.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, header};

/// Name of the session cookie.
pub(crate) const COOKIE: &str = "outbox_session";
/// How long a login lasts.
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; the oldest is dropped beyond it.
const MAX_SESSIONS: usize = 1024;

/// A logged-in browser.
#[derive(Clone, Debug)]
pub(crate) struct Session {
    pub(crate) csrf: String,
    expires: Instant,
}

/// Why a mutation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denied {
    /// No token configured.
    ReadOnly,
    /// Cross-site request (Origin or Sec-Fetch-Site).
    CrossOrigin,
    /// No credentials, or a wrong token.
    Unauthenticated,
    /// A session without its CSRF token.
    Csrf,
}

impl Denied {
    pub(crate) fn status(self) -> StatusCode {
        match self {
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            _ => StatusCode::FORBIDDEN,
        }
    }

    pub(crate) fn message(self) -> &'static str {
        match self {
            Self::ReadOnly => "read-only dashboard: start it with --token or OUTBOX_DASHBOARD_TOKEN to allow changes",
            Self::CrossOrigin => "cross-origin request refused",
            Self::Unauthenticated => "a valid bearer token or login session is required",
            Self::Csrf => "missing or wrong CSRF token",
        }
    }
}

/// The token and the live sessions.
#[derive(Debug)]
pub(crate) struct Auth {
    token: Option<String>,
    sessions: Mutex<HashMap<String, Session>>,
}

impl Auth {
    pub(crate) fn new(token: Option<String>) -> Self {
        Self { token: token.filter(|t| !t.is_empty()), sessions: Mutex::new(HashMap::new()) }
    }

    pub(crate) fn read_only(&self) -> bool {
        self.token.is_none()
    }

    /// Whether `given` is the configured token (constant time in its length).
    pub(crate) fn token_matches(&self, given: &str) -> bool {
        self.token.as_deref().is_some_and(|t| constant_time_eq(t.as_bytes(), given.as_bytes()))
    }

    /// Starts a session; returns its id (the cookie value).
    pub(crate) fn login(&self) -> anyhow::Result<String> {
        let id = random_hex()?;
        let session = Session { csrf: random_hex()?, expires: Instant::now() + SESSION_TTL };
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| k.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(id.clone(), session);
        Ok(id)
    }

    pub(crate) fn logout(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, COOKIE) {
            self.sessions.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        }
    }

    /// The request's live session, if any.
    pub(crate) fn session(&self, headers: &HeaderMap) -> Option<Session> {
        if self.read_only() {
            return None;
        }
        let id = cookie(headers, COOKIE)?;
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.get(&id).filter(|s| s.expires > Instant::now()).cloned()
    }

    /// Checks a request that changes data; `form_csrf` is the form's `csrf` field, if any.
    pub(crate) fn authorize(&self, headers: &HeaderMap, form_csrf: Option<&str>) -> Result<(), Denied> {
        if self.read_only() {
            return Err(Denied::ReadOnly);
        }
        same_origin(headers)?;
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let given = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).unwrap_or_default();
            return if self.token_matches(given.trim()) { Ok(()) } else { Err(Denied::Unauthenticated) };
        }
        let Some(session) = self.session(headers) else { return Err(Denied::Unauthenticated) };
        let given = form_csrf.or_else(|| headers.get("x-csrf-token").and_then(|v| v.to_str().ok())).unwrap_or_default();
        if constant_time_eq(session.csrf.as_bytes(), given.as_bytes()) { Ok(()) } else { Err(Denied::Csrf) }
    }
}

/// Refuses cross-site requests. A request without `Origin` or `Sec-Fetch-Site` (curl, a
/// script) passes here: it still needs the bearer token, which a browser never adds by itself.
pub(crate) fn same_origin(headers: &HeaderMap) -> Result<(), Denied> {
    let text = |name| headers.get(name).map(|v: &header::HeaderValue| v.to_str().unwrap_or_default());
    if let Some(site) = text("sec-fetch-site")
        && site != "same-origin"
        && site != "none"
    {
        return Err(Denied::CrossOrigin);
    }
    if let Some(origin) = text(header::ORIGIN.as_str()) {
        let host = text(header::HOST.as_str()).unwrap_or_default();
        let authority = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
        if host.is_empty() || authority != Some(host) {
            return Err(Denied::CrossOrigin);
        }
    }
    Ok(())
}

/// The value of cookie `name`.
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// The `Set-Cookie` value for a new session.
pub(crate) fn session_cookie(id: &str) -> String {
    format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}", SESSION_TTL.as_secs())
}

/// The `Set-Cookie` value that ends a session.
pub(crate) fn cleared_cookie() -> String {
    format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

fn random_hex() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for a session: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn read_only_refuses_everything() {
        let auth = Auth::new(None);
        assert_eq!(auth.authorize(&headers(&[("authorization", "Bearer x")]), None), Err(Denied::ReadOnly));
    }

    #[test]
    fn bearer_and_origin() {
        let auth = Auth::new(Some("s3cret".into()));
        assert_eq!(auth.authorize(&headers(&[("authorization", "Bearer s3cret")]), None), Ok(()));
        assert_eq!(auth.authorize(&headers(&[("authorization", "Bearer nope")]), None), Err(Denied::Unauthenticated));
        assert_eq!(auth.authorize(&headers(&[]), None), Err(Denied::Unauthenticated));
        let cross = headers(&[("authorization", "Bearer s3cret"), ("host", "a:1"), ("origin", "http://b:1")]);
        assert_eq!(auth.authorize(&cross, None), Err(Denied::CrossOrigin));
        let site = headers(&[("authorization", "Bearer s3cret"), ("sec-fetch-site", "cross-site")]);
        assert_eq!(auth.authorize(&site, None), Err(Denied::CrossOrigin));
        let same = headers(&[("authorization", "Bearer s3cret"), ("host", "a:1"), ("origin", "http://a:1")]);
        assert_eq!(auth.authorize(&same, None), Ok(()));
    }

    #[test]
    fn session_needs_its_csrf_token() {
        let auth = Auth::new(Some("s3cret".into()));
        let id = auth.login().unwrap();
        let cookie = format!("other=1; {COOKIE}={id}");
        let h = headers(&[("cookie", &cookie)]);
        let csrf = auth.session(&h).unwrap().csrf;
        assert_eq!(auth.authorize(&h, None), Err(Denied::Csrf));
        assert_eq!(auth.authorize(&h, Some("wrong")), Err(Denied::Csrf));
        assert_eq!(auth.authorize(&h, Some(&csrf)), Ok(()));
        auth.logout(&h);
        assert_eq!(auth.authorize(&h, Some(&csrf)), Err(Denied::Unauthenticated));
    }
}
