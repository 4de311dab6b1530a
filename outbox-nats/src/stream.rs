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
}

impl StreamSpec {
    /// A spec with the default 10-minute duplicate window.
    pub fn new(name: impl Into<String>, subjects: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            name: name.into(),
            subjects: subjects.into_iter().map(Into::into).collect(),
            duplicate_window: Duration::from_secs(600),
        }
    }

    /// Sets [`StreamSpec::duplicate_window`].
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }
}

/// Creates the stream if it is missing; if it exists, checks it takes the spec's subjects (and
/// warns when its duplicate window is shorter than the spec's; it is left as is). Returns the
/// stream's configuration as the server holds it, ready for [`check_duplicate_window`].
pub async fn ensure_stream(js: &jetstream::Context, spec: &StreamSpec) -> Result<stream::Config> {
    let config = stream::Config {
        name: spec.name.clone(),
        subjects: spec.subjects.clone(),
        duplicate_window: spec.duplicate_window,
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
    if held.duplicate_window < spec.duplicate_window {
        tracing::warn!(
            stream = %spec.name,
            held = ?held.duplicate_window,
            wanted = ?spec.duplicate_window,
            "the existing stream keeps a shorter duplicate window than asked for"
        );
    }
    Ok(held.clone())
}

/// The duplicate window a relay needs: a redelivery can come up to `claim_ttl` plus the retry
/// horizon after the first publish.
pub fn required_duplicate_window(relay: &RelayConfig) -> Duration {
    relay.claim_ttl + relay.retry.retry_horizon()
}

/// Warns (and returns an error describing it) when the stream's duplicate window is shorter
/// than [`required_duplicate_window`]: a redelivery after a crash could then pass dedup.
pub fn check_duplicate_window(stream: &stream::Config, relay: &RelayConfig) -> Result<()> {
    let needed = required_duplicate_window(relay);
    if stream.duplicate_window >= needed {
        return Ok(());
    }
    let reason = format!(
        "stream `{}` has a duplicate window of {:?}, shorter than claim_ttl + retry horizon ({needed:?}); \
         redeliveries after a crash may not be deduplicated",
        stream.name, stream.duplicate_window
    );
    tracing::warn!("{reason}");
    Err(Error::config("nats.duplicate_window", reason))
}
