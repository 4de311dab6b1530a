//! The conformance suite: one contract, every backend.
//!
//! An adapter runs every store case with [`store_conformance!`](crate::store_conformance)
//! and every bus case with [`bus_conformance!`](crate::bus_conformance); each case becomes its
//! own `#[tokio::test]`. The setup function must give each call its own namespace (table,
//! stream, subject), so cases run in parallel.
//!
//! Cases wait on conditions with a deadline ([`eventually`]); none asserts on elapsed time.

pub mod bus;
mod killable;
pub mod store;

pub use killable::Killable;

use std::future::Future;
use std::time::Duration;

/// What a conformance setup may return: the fixture, or `None` to skip the case.
pub trait IntoFixture<T> {
    /// The fixture, if the case should run.
    fn into_fixture(self) -> Option<T>;
}

impl<T> IntoFixture<T> for T {
    fn into_fixture(self) -> Option<T> {
        Some(self)
    }
}

impl<T> IntoFixture<T> for Option<T> {
    fn into_fixture(self) -> Option<T> {
        self
    }
}

/// Polls `check` every 20 ms until it returns `Some`, panicking with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads an `OUTBOX_TEST_*_URL` variable, falling back to `default`.
pub fn test_url(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// Whether an unreachable test server must fail the test (`OUTBOX_TEST_STRICT=1`, set by CI)
/// rather than skip it.
pub fn strict() -> bool {
    std::env::var("OUTBOX_TEST_STRICT").is_ok_and(|v| v == "1" || v == "true")
}

/// Handles an unreachable test server: panics naming the variable and URL in strict mode,
/// otherwise prints a skip notice and returns `None`.
pub fn unreachable_server<T>(var: &str, url: &str, err: impl std::fmt::Display) -> Option<T> {
    let msg = format!("cannot reach the test server at {url} (set {var}): {err}");
    if strict() {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg} (OUTBOX_TEST_STRICT=1 makes this a failure)");
    None
}

/// A short unique suffix for test namespaces.
pub fn unique_suffix() -> String {
    uuid::Uuid::now_v7().simple().to_string()[20..].to_owned()
}
