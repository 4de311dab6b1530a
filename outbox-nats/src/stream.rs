//! Creating or checking the stream, and the duplicate-window check.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use outbox_core::{Error, RelayConfig, Result};

/// The stream the outbox publishes into.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamSpec {
    /// Stream name.
    pub name: String,
    /// Subjects it takes, e.g. `events.>`.
    pub subjects: Vec<String>,
    /// How long JetStream remembers `Nats-Msg-Id`s. Default 10 minutes; see
    /// [`check_duplicate_window`].
    pub duplicate_window: Duration,
    /// The window the relay needs ([`required_duplicate_window`]), set by
    /// [`StreamSpec::for_relay`]. Default `None`: not checked.
    pub required_window: Option<Duration>,
}

impl StreamSpec {
    /// A spec with the default 10-minute duplicate window.
    pub fn new(name: impl Into<String>, subjects: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            name: name.into(),
            subjects: subjects.into_iter().map(Into::into).collect(),
            duplicate_window: Duration::from_secs(600),
            required_window: None,
        }
    }

    /// Sets [`StreamSpec::duplicate_window`].
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }

    /// Checks the window against the relay that publishes into the stream, so a start-up
    /// catches a window too short to deduplicate its redeliveries: [`ensure_stream`] creates a
    /// missing stream with at least [`required_duplicate_window`], and logs a warning when an
    /// existing stream keeps less (it is left as is; [`check_duplicate_window`] turns that into
    /// an error).
    pub fn for_relay(mut self, relay: &RelayConfig) -> Self {
        self.required_window = Some(required_duplicate_window(relay));
        self
    }
}

/// Creates the stream if it is missing; if it exists, checks it takes the spec's subjects (and
/// warns when its duplicate window is shorter than the spec's or than the relay needs, see
/// [`StreamSpec::for_relay`]; it is left as is). Returns the stream's configuration as the
/// server holds it, ready for [`check_duplicate_window`].
pub async fn ensure_stream(js: &jetstream::Context, spec: &StreamSpec) -> Result<stream::Config> {
    let wanted = spec.duplicate_window.max(spec.required_window.unwrap_or_default());
    let config = stream::Config {
        name: spec.name.clone(),
        subjects: spec.subjects.clone(),
        duplicate_window: wanted,
        ..Default::default()
    };
    let stream = js.get_or_create_stream(config).await.map_err(|e| crate::error::stream_error(&spec.name, e))?;
    let held = &stream.cached_info().config;
    let missing: Vec<_> = spec.subjects.iter().filter(|s| !held.subjects.contains(s)).collect();
    if !missing.is_empty() {
        return Err(Error::config(
            "nats.stream",
            format!(
                "stream `{}` exists but does not take subjects {missing:?} (it takes {:?})",
                spec.name, held.subjects
            ),
        ));
    }
    if let Some(reason) = spec.required_window.and_then(|needed| too_short(held, needed)) {
        tracing::warn!("{reason}");
    } else if held.duplicate_window < wanted {
        tracing::warn!(
            stream = %spec.name,
            held = ?held.duplicate_window,
            wanted = ?wanted,
            "the existing stream keeps a shorter duplicate window than asked for"
        );
    }
    Ok(held.clone())
}

/// The duplicate window a relay needs: the longest from a message's first copy reaching the
/// stream to its last retry. Each of its `max_attempts` attempts, and one more repeated after
/// a crash, may hold its claim for up to `claim_ttl` and then wait up to one fallback interval
/// (+10 % jitter) for a sweep; between attempts the backoff waits up to
/// [`RetryPolicy::worst_case_retry_span`](outbox_core::RetryPolicy::worst_case_retry_span)
/// (jitter at most doubles each delay). With the defaults: 546.5 s, about 9 minutes.
pub fn required_duplicate_window(relay: &RelayConfig) -> Duration {
    let sweep = relay.fallback.as_ref().map_or(Duration::ZERO, |f| f.interval.mul_f64(1.1));
    let periods = relay.retry.max_attempts.saturating_add(1);
    (relay.claim_ttl.saturating_add(sweep)).saturating_mul(periods).saturating_add(relay.retry.worst_case_retry_span())
}

/// Warns (and returns an error describing it) when the stream's duplicate window is shorter
/// than [`required_duplicate_window`]: a redelivery after a crash could then pass dedup.
pub fn check_duplicate_window(stream: &stream::Config, relay: &RelayConfig) -> Result<()> {
    let Some(reason) = too_short(stream, required_duplicate_window(relay)) else { return Ok(()) };
    tracing::warn!("{reason}");
    Err(Error::config("nats.duplicate_window", reason))
}

/// Why `stream`'s duplicate window cannot deduplicate a relay needing `needed`, if it cannot.
fn too_short(stream: &stream::Config, needed: Duration) -> Option<String> {
    (stream.duplicate_window < needed).then(|| {
        format!(
            "stream `{}` has a duplicate window of {:?}, shorter than the relay's worst-case redelivery span \
             ({needed:?}, outbox_nats::required_duplicate_window); redeliveries may not be deduplicated",
            stream.name, stream.duplicate_window
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every retry of the default policy drawn at random: the window must cover the slowest
    /// of them plus a claim per attempt.
    #[test]
    fn the_required_window_covers_jittered_retries() {
        let relay = RelayConfig::default();
        let slowest = (0..2_000)
            .map(|_| (1..relay.retry.max_attempts).map(|a| relay.retry.delay_for(a)).sum::<Duration>())
            .max()
            .unwrap();
        let floor = relay.claim_ttl * relay.retry.max_attempts + slowest;
        assert!(required_duplicate_window(&relay) >= floor, "{:?} < {floor:?}", required_duplicate_window(&relay));
    }

    #[test]
    fn the_default_relay_needs_about_nine_minutes_which_the_default_window_covers() {
        let needed = required_duplicate_window(&RelayConfig::default());
        assert_eq!(needed, Duration::from_millis(546_500));
        assert!(needed < StreamSpec::new("S", ["s.>"]).duplicate_window);
    }
}
