//! How a topic becomes a subject, and the JetStream bus settings.

use std::fmt;
use std::sync::Arc;
#[cfg(feature = "jetstream")]
use std::time::Duration;

use outbox_core::OutboxMessage;
#[cfg(feature = "jetstream")]
use outbox_core::{Error, Result};

/// Maps an outbox message to a NATS subject.
#[derive(Clone, Default)]
pub enum SubjectMapping {
    /// The topic is the subject.
    #[default]
    Identity,
    /// The subject is this prefix followed by the topic, e.g. `events.` + `users.registered`.
    Prefix(String),
    /// Any rule you like.
    Custom(Arc<dyn Fn(&OutboxMessage) -> String + Send + Sync>),
}

impl fmt::Debug for SubjectMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Identity => f.write_str("Identity"),
            Self::Prefix(p) => f.debug_tuple("Prefix").field(p).finish(),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

impl SubjectMapping {
    /// A [`SubjectMapping::Custom`] rule from a closure.
    pub fn custom(rule: impl Fn(&OutboxMessage) -> String + Send + Sync + 'static) -> Self {
        Self::Custom(Arc::new(rule))
    }

    /// The subject for `msg`.
    pub fn subject(&self, msg: &OutboxMessage) -> String {
        match self {
            Self::Identity => msg.topic.clone(),
            Self::Prefix(p) => format!("{p}{}", msg.topic),
            Self::Custom(f) => f(msg),
        }
    }
}

/// Why `subject` cannot be published to, if it cannot: empty, whitespace, empty tokens or wildcards.
pub fn invalid_subject(subject: &str) -> Option<String> {
    if subject.is_empty() {
        return Some("the subject is empty".into());
    }
    if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some(format!("subject `{subject}` contains whitespace"));
    }
    if subject.split('.').any(str::is_empty) {
        return Some(format!("subject `{subject}` has an empty token (leading, trailing or double `.`)"));
    }
    if subject.split('.').any(|t| t == "*" || t == ">") {
        return Some(format!("subject `{subject}` has a wildcard; publish subjects must be literal"));
    }
    None
}

#[cfg(feature = "jetstream")]
/// JetStream bus settings. Defaults: [`SubjectMapping::Identity`], a window of 256 acks in
/// flight, a 5 s ack timeout, and a stream required for every subject.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct JetStreamConfig {
    /// Topic → subject rule.
    pub subjects: SubjectMapping,
    /// Publishes awaiting their ack at once (per batch). 1 to 65,536.
    pub window: usize,
    /// How long to wait for one ack before the message is retryable. Above 0.
    pub ack_timeout: Duration,
    /// Whether every subject must have a stream. Default `true`. A message to a subject no
    /// stream takes is `Retryable` either way (never dead-lettered for that at once, though
    /// still once `max_attempts` runs out). With `true` a missing stream is an operator error:
    /// it is logged at error level (at most once a minute) and
    /// [`JetStreamBus::health`](crate::JetStreamBus::health) fails naming the subject until a
    /// publish to it succeeds. With `false` it is expected (streams created after the relay
    /// starts): retried quietly, and health stays OK.
    pub require_stream: bool,
}

#[cfg(feature = "jetstream")]
/// The name the design notes use for [`JetStreamConfig`].
pub type NatsBusConfig = JetStreamConfig;

#[cfg(feature = "jetstream")]
impl Default for JetStreamConfig {
    fn default() -> Self {
        Self {
            subjects: SubjectMapping::Identity,
            window: 256,
            ack_timeout: Duration::from_secs(5),
            require_stream: true,
        }
    }
}

#[cfg(feature = "jetstream")]
impl JetStreamConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        if !(1..=65_536).contains(&self.window) {
            return Err(Error::config("nats.window", "must be between 1 and 65536"));
        }
        if self.ack_timeout.is_zero() {
            return Err(Error::config("nats.ack_timeout", "must be above 0"));
        }
        if let SubjectMapping::Prefix(p) = &self.subjects
            && let Some(reason) = invalid_subject(&format!("{p}x"))
        {
            return Err(Error::config("nats.subject_prefix", reason));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_checked_before_publishing() {
        assert_eq!(invalid_subject("events.users.registered"), None);
        for bad in ["", "a b", "a..b", ".a", "a.", "a.*", "a.>", "tab\there"] {
            assert!(invalid_subject(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn mappings_build_subjects() {
        let msg = OutboxMessage::from_new(outbox_core::NewMessage::new("users.registered", "x"), 0);
        assert_eq!(SubjectMapping::Identity.subject(&msg), "users.registered");
        assert_eq!(SubjectMapping::Prefix("events.".into()).subject(&msg), "events.users.registered");
        assert_eq!(SubjectMapping::custom(|m| format!("x.{}", m.topic)).subject(&msg), "x.users.registered");
    }
}
