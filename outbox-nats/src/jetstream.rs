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

use crate::bus::nats_headers;
use crate::config::{JetStreamConfig, SubjectMapping, invalid_subject};

/// Publishes to JetStream: pipelined (a window of acks in flight), with `Nats-Msg-Id` set to
/// the outbox message id so the stream's duplicate window drops redeliveries.
///
/// ```no_run
/// # async fn run() -> outbox_core::Result<()> {
/// use outbox_nats::{JetStreamBus, StreamSpec, connect, ensure_stream};
///
/// let client = connect("nats://127.0.0.1:4222").await?;
/// let js = async_nats::jetstream::new(client.clone());
/// ensure_stream(&js, &StreamSpec::new("OUTBOX", ["events.>"])).await?;
/// let bus = JetStreamBus::builder(client).subject_prefix("events.").build()?;
/// # let _ = bus; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct JetStreamBus {
    js: jetstream::Context,
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
    /// Acks in flight per batch (default 256).
    pub fn window(mut self, window: usize) -> Self {
        self.config.window = window;
        self
    }
    /// Ack timeout per message (default 5 s).
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.config.ack_timeout = timeout;
        self
    }
    /// Replaces all settings.
    pub fn config(mut self, config: JetStreamConfig) -> Self {
        self.config = config;
        self
    }
    /// Validates the settings.
    pub fn build(self) -> Result<JetStreamBus> {
        self.config.validate()?;
        let mut js = jetstream::new(self.client);
        js.set_timeout(self.config.ack_timeout);
        Ok(JetStreamBus { js, config: self.config })
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

    async fn publish_one(&self, msg: &OutboxMessage) -> PublishOutcome {
        let subject = self.config.subjects.subject(msg);
        if let Some(reason) = invalid_subject(&subject) {
            return PublishOutcome::Permanent(reason);
        }
        let headers = match nats_headers(msg) {
            Ok(h) => h,
            Err(reason) => return PublishOutcome::Permanent(reason),
        };
        let publish = PublishMessage::build()
            .payload(Bytes::copy_from_slice(&msg.payload))
            .headers(headers)
            .message_id(msg.id.to_string());
        let ack = match self.js.send_publish(subject.clone(), publish).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match ack {
            Ok(ack) if ack.duplicate => PublishOutcome::Duplicate,
            Ok(_) => PublishOutcome::Published,
            Err(e) => match e.kind() {
                PublishErrorKind::MaxPayloadExceeded => PublishOutcome::Permanent(e.to_string()),
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
    /// restart). Only a confirmed "no stream has this subject" is permanent.
    async fn no_stream(&self, subject: &str) -> PublishOutcome {
        use async_nats::jetstream::context::GetStreamByNameErrorKind as Kind;
        match self.js.stream_by_subject(subject).await {
            Err(e) if matches!(e.kind(), Kind::NotFound) => PublishOutcome::Permanent(format!(
                "no JetStream stream takes subject `{subject}`; create one (outbox_nats::ensure_stream) or change the subject mapping"
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
