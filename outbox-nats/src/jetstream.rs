//! The JetStream bus: acked, pipelined and deduplicated.

use std::error::Error as _;
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, ErrorCode};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use outbox_core::{Bus, OutboxMessage, PublishOutcome, Result};

use crate::bus::{NATS_MSG_ID, oversized, prepare};
use crate::config::{JetStreamConfig, SubjectMapping};

/// Publishes to JetStream: pipelined (a window of acks in flight), with `Nats-Msg-Id` set to
/// the outbox message id so the stream's duplicate window drops redeliveries.
///
/// Outcomes: an ack is `Published`, an ack flagged duplicate `Duplicate`; a timeout, a lost
/// connection or JetStream not answering `Retryable`; a message over the server's
/// `max_payload`, an invalid subject or header, or a subject no stream takes (with
/// [`require_stream`](JetStreamBusBuilder::require_stream), the default) `Permanent`. Each
/// fails alone: the rest of the batch still goes out.
///
/// ```no_run
/// # async fn run() -> outbox_core::Result<()> {
/// use outbox_nats::{JetStreamBus, StreamSpec, connect, ensure_stream};
///
/// let client = connect("nats://127.0.0.1:4222").await?;
/// let bus = JetStreamBus::builder(client).subject_prefix("events.").window(512).build()?;
/// ensure_stream(bus.context(), &StreamSpec::new("OUTBOX", ["events.>"])).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct JetStreamBus {
    js: jetstream::Context,
    client: async_nats::Client,
    config: JetStreamConfig,
}

/// Settings for a [`JetStreamBus`]; [`build`](JetStreamBusBuilder::build) validates them.
#[derive(Debug)]
#[must_use]
pub struct JetStreamBusBuilder {
    client: async_nats::Client,
    config: JetStreamConfig,
}

impl JetStreamBusBuilder {
    /// Subject = `prefix` + topic.
    pub fn subject_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config.subjects = SubjectMapping::Prefix(prefix.into());
        self
    }
    /// Any topic → subject rule.
    pub fn subjects(mut self, mapping: SubjectMapping) -> Self {
        self.config.subjects = mapping;
        self
    }
    /// Acks in flight per batch (default 256, 1 to 65,536).
    pub fn window(mut self, window: usize) -> Self {
        self.config.window = window;
        self
    }
    /// Ack timeout per message (default 5 s, above 0).
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.config.ack_timeout = timeout;
        self
    }
    /// Whether a subject no stream takes is permanent (default `true`) or retryable.
    pub fn require_stream(mut self, required: bool) -> Self {
        self.config.require_stream = required;
        self
    }
    /// Replaces all settings.
    pub fn config(mut self, config: JetStreamConfig) -> Self {
        self.config = config;
        self
    }
    /// Validates the settings; an error names the bad field (`nats.window`, ...).
    pub fn build(self) -> Result<JetStreamBus> {
        self.config.validate()?;
        let mut js = jetstream::new(self.client.clone());
        js.set_timeout(self.config.ack_timeout);
        Ok(JetStreamBus { js, client: self.client, config: self.config })
    }
}

impl JetStreamBus {
    /// Starts building a bus on `client`.
    pub fn builder(client: async_nats::Client) -> JetStreamBusBuilder {
        JetStreamBusBuilder { client, config: JetStreamConfig::default() }
    }

    /// The JetStream context, e.g. for [`ensure_stream`](crate::ensure_stream).
    pub fn context(&self) -> &jetstream::Context {
        &self.js
    }

    /// The settings it was built with.
    pub fn config(&self) -> &JetStreamConfig {
        &self.config
    }

    /// Sends `msg` and awaits its ack. [`Bus::publish`] keeps up to `window` of these running,
    /// so the sends go out back to back and the acks come back pipelined.
    async fn publish_one(&self, msg: &OutboxMessage) -> PublishOutcome {
        let (subject, mut headers) = match prepare(&self.config.subjects, msg) {
            Ok(prepared) => prepared,
            Err(reason) => return PublishOutcome::Permanent(reason),
        };
        headers.insert(NATS_MSG_ID, msg.id.to_string().as_str());
        // Checked here so that it fails alone, with a reason that names the limit.
        if let Some(reason) = oversized(&self.client, &headers, &msg.payload) {
            return PublishOutcome::Permanent(reason);
        }
        let publish = PublishMessage::build().payload(Bytes::copy_from_slice(&msg.payload)).headers(headers);
        let ack = match self.js.send_publish(subject.clone(), publish).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match ack {
            Ok(ack) if ack.duplicate => PublishOutcome::Duplicate,
            Ok(_) => PublishOutcome::Published,
            Err(e) => match e.kind() {
                PublishErrorKind::MaxPayloadExceeded => {
                    PublishOutcome::Permanent(format!("over the server's max_payload size limit: {e}"))
                }
                PublishErrorKind::StreamNotFound => self.no_stream(&subject).await,
                PublishErrorKind::Other if jetstream_code(&e) == Some(ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM) => {
                    PublishOutcome::Permanent(format!("the stream's max message size rejects it: {}", source_text(&e)))
                }
                _ => PublishOutcome::Retryable(format!(
                    "JetStream publish to `{subject}` failed: {e} {}",
                    source_text(&e)
                )),
            },
        }
    }

    /// "No responders" means no stream took the subject, or JetStream is not up yet (a server
    /// restart). Only a confirmed "no stream has this subject" is permanent, and only when
    /// [`JetStreamConfig::require_stream`] is set.
    async fn no_stream(&self, subject: &str) -> PublishOutcome {
        use async_nats::jetstream::context::GetStreamByNameErrorKind as Kind;
        match self.js.stream_by_subject(subject).await {
            Err(e) if matches!(e.kind(), Kind::NotFound) && self.config.require_stream => {
                PublishOutcome::Permanent(format!(
                    "no JetStream stream takes subject `{subject}`; create one (outbox_nats::ensure_stream) or change the subject mapping"
                ))
            }
            Err(e) if matches!(e.kind(), Kind::NotFound) => PublishOutcome::Retryable(format!(
                "no JetStream stream takes subject `{subject}` yet (require_stream is off, so it waits for one)"
            )),
            _ => PublishOutcome::Retryable(format!("JetStream did not answer for `{subject}` (no responders)")),
        }
    }
}

fn jetstream_code(e: &async_nats::jetstream::context::PublishError) -> Option<ErrorCode> {
    e.source().and_then(|s| s.downcast_ref::<jetstream::Error>()).map(|j| j.error_code())
}

fn source_text(e: &dyn std::error::Error) -> String {
    e.source().map(|s| s.to_string()).unwrap_or_default()
}

#[async_trait]
impl Bus for JetStreamBus {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<PublishOutcome> {
        let sends: Vec<_> = batch.iter().map(|m| self.publish_one(m)).collect();
        futures::stream::iter(sends).buffered(self.config.window).collect().await
    }
}
