//! The JetStream bus: acked, pipelined and deduplicated.

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, ErrorCode};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use outbox_core::{Bus, OutboxMessage, PublishOutcome, Result};

use crate::config::{JetStreamConfig, SubjectMapping};
use crate::message::{NATS_MSG_ID, oversized, prepare};
use crate::stream_health::{BatchStreams, Lookup, MissingStream, StreamHealth};

/// Publishes to JetStream: pipelined (a window of acks in flight), with `Nats-Msg-Id` set to
/// the outbox message id so the stream's duplicate window drops redeliveries.
///
/// Outcomes: an ack is `Published`, an ack flagged duplicate `Duplicate`; a timeout, a lost
/// connection or JetStream not answering `Retryable`; a message over the server's
/// `max_payload` or an invalid subject or header `Permanent`. Each fails alone: the rest of
/// the batch still goes out.
///
/// A subject no stream takes is `Retryable`: a relay started before its stream is created
/// waits for it. With [`require_stream`](JetStreamBusBuilder::require_stream) (the default)
/// that is an operator error: logged at error level (at most once a minute) and reported by
/// [`health`](JetStreamBus::health) until a publish to the subject succeeds. Each batch looks
/// a subject's stream up at most once.
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
    /// Shared by the clones, so a clone kept for a health check sees the relay's publishes.
    streams: Arc<StreamHealth>,
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
    /// Whether every subject must have a stream (default `true`): see
    /// [`JetStreamConfig::require_stream`].
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
        Ok(JetStreamBus { js, client: self.client, config: self.config, streams: Arc::default() })
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

    /// `Err` naming the subjects whose last publish found no stream (with
    /// [`require_stream`](JetStreamConfig::require_stream) on), for a health endpoint: their
    /// messages are being retried. A subject is cleared by the next publish to it that
    /// succeeds. Shared by the bus's clones; no round trip.
    pub fn health(&self) -> std::result::Result<(), MissingStream> {
        self.streams.check()
    }

    /// Sends `msg` and awaits its ack. [`Bus::publish`] keeps up to `window` of these running,
    /// so the sends go out back to back and the acks come back pipelined.
    async fn publish_one(&self, msg: &OutboxMessage, streams: &BatchStreams) -> PublishOutcome {
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
        if ack.is_ok() && self.streams.watching() {
            streams.delivered(&subject);
        }
        match ack {
            Ok(ack) if ack.duplicate => PublishOutcome::Duplicate,
            Ok(_) => PublishOutcome::Published,
            Err(e) => match e.kind() {
                PublishErrorKind::MaxPayloadExceeded => {
                    PublishOutcome::Permanent(format!("over the server's max_payload size limit: {e}"))
                }
                PublishErrorKind::StreamNotFound => self.no_stream(&subject, streams).await,
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
    /// restart): the lookup tells which. Retryable either way.
    async fn no_stream(&self, subject: &str, streams: &BatchStreams) -> PublishOutcome {
        PublishOutcome::Retryable(match streams.lookup(&self.js, subject).await {
            Lookup::Missing if self.config.require_stream => format!(
                "no JetStream stream takes subject `{subject}`; create one (outbox_nats::ensure_stream) or change the subject mapping"
            ),
            Lookup::Missing => format!(
                "no JetStream stream takes subject `{subject}` yet (require_stream is off, so it waits for one)"
            ),
            Lookup::Found(stream) => {
                format!("JetStream did not answer for `{subject}` (no responders), though stream `{stream}` takes it")
            }
            Lookup::Failed(e) => {
                format!("JetStream did not answer for `{subject}` (no responders; stream lookup failed: {e})")
            }
        })
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
        let streams = BatchStreams::default();
        let sends: Vec<_> = batch.iter().map(|m| self.publish_one(m, &streams)).collect();
        let outcomes = futures::stream::iter(sends).buffered(self.config.window).collect().await;
        self.streams.settle(streams, self.config.require_stream);
        outcomes
    }
}
