//! The consumer side on JetStream: a durable pull consumer that runs a
//! [`Handler`] per message, acknowledges only after the handler (and its inbox transaction)
//! returned, redelivers failures after a back-off and dead-letters what keeps failing.
//!
//! Paired with `outbox_sea_orm::inbox::Inbox`, each message's effects happen once: the
//! outbox and JetStream deliver at least once, the inbox turns a redelivery into
//! [`Processed::Duplicate`].
//!
//! ```no_run
//! # async fn run() -> outbox_core::Result<()> {
//! use outbox_core::consumer::{ConsumerConfig, Delivery, Processed, json_handler};
//! use outbox_nats::consumer::JetStreamConsumer;
//!
//! #[derive(serde::Deserialize)]
//! struct OrderPlaced { id: u64 }
//!
//! let client = outbox_nats::connect("nats://127.0.0.1:4222").await?;
//! let js = async_nats::jetstream::new(client);
//! let handler = json_handler(|order: OrderPlaced, _d: Delivery| async move {
//!     println!("order {}", order.id);
//!     Ok(Processed::Done(()))
//! });
//! let consumer = JetStreamConsumer::new(js, "ORDERS", "shipping", "dead.orders")
//!     .filter_subject("orders.>")
//!     .config(ConsumerConfig::default().per_key(true))
//!     .spawn(handler)
//!     .await?;
//! // …
//! consumer.shutdown().await?;
//! # Ok(()) }
//! # fn main() {}
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::{self, AckKind, Message};
use futures::StreamExt;
use outbox_core::consumer::{
    ConsumerConfig, ConsumerCounters, Counted, Delivery, Handler, HandlerError, Processed, Shutdown, delivery_span,
    guarded_handle,
};
pub use outbox_core::consumer::{ConsumerHandle, ConsumerStats};
use outbox_core::message::HEADER_KEY;
use outbox_core::{Error, Result};

use crate::error::temporary;
use crate::message::NATS_MSG_ID;

/// Header of a dead letter: the last error.
pub const HEADER_ERROR: &str = "Outbox-Error";
/// Header of a dead letter: the subject the message was consumed from.
pub const HEADER_ORIGINAL_SUBJECT: &str = "Outbox-Original-Subject";
/// Header of a dead letter: how many times it was delivered.
pub const HEADER_DELIVERIES: &str = "Outbox-Deliveries";

/// A durable JetStream pull consumer, not yet running; [`spawn`](Self::spawn) starts it.
#[derive(Debug, Clone)]
pub struct JetStreamConsumer {
    js: jetstream::Context,
    stream: String,
    durable: String,
    filter_subject: Option<String>,
    dead_letter_subject: String,
    config: ConsumerConfig,
}

impl JetStreamConsumer {
    /// A consumer named `durable` on `stream`, dead-lettering to `dead_letter_subject` (which
    /// a stream must capture; keep it outside the consumer's filter).
    pub fn new(
        js: jetstream::Context,
        stream: impl Into<String>,
        durable: impl Into<String>,
        dead_letter_subject: impl Into<String>,
    ) -> Self {
        Self {
            js,
            stream: stream.into(),
            durable: durable.into(),
            filter_subject: None,
            dead_letter_subject: dead_letter_subject.into(),
            config: ConsumerConfig::default(),
        }
    }

    /// Consumes only subjects matching `subject` (default: the whole stream).
    pub fn filter_subject(mut self, subject: impl Into<String>) -> Self {
        self.filter_subject = Some(subject.into());
        self
    }

    /// Sets the runner settings (default [`ConsumerConfig::default`]).
    pub fn config(mut self, config: ConsumerConfig) -> Self {
        self.config = config;
        self
    }

    /// Validates the settings, creates (or adopts) the durable consumer and starts fetching.
    /// Ack policy explicit, `ack_wait` from the config; the server's own `max_deliver` is
    /// unlimited, since the runner dead-letters after [`ConsumerConfig::max_deliveries`].
    pub async fn spawn<H: Handler>(self, handler: H) -> Result<ConsumerHandle> {
        self.config.validate()?;
        let bad_name = |n: &str| n.is_empty() || n.contains(['.', '*', '>', ' ', '\t']);
        if bad_name(&self.durable) {
            return Err(Error::config(
                "consumer.durable",
                format!("must be a NATS name without . * > or spaces, got {:?}", self.durable),
            ));
        }
        if crate::invalid_subject(&self.dead_letter_subject).is_some() {
            return Err(Error::config(
                "consumer.dead_letter_subject",
                format!("not a valid subject: {:?}", self.dead_letter_subject),
            ));
        }
        let stream =
            self.js.get_stream(&self.stream).await.map_err(|e| temporary(format!("stream {}", self.stream), e))?;
        let consumer_config = pull::Config {
            durable_name: Some(self.durable.clone()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.config.ack_wait,
            max_deliver: -1,
            filter_subject: self.filter_subject.clone().unwrap_or_default(),
            ..Default::default()
        };
        let consumer = stream
            .get_or_create_consumer(&self.durable, consumer_config)
            .await
            .map_err(|e| temporary(format!("consumer {} on {}", self.durable, self.stream), e))?;
        let spec = Arc::new(self);
        Ok(ConsumerHandle::spawn("nats", move |shutdown, counters| {
            Runner { spec, consumer, handler: Arc::new(handler), counters }.run(shutdown)
        }))
    }
}

struct Runner<H> {
    spec: Arc<JetStreamConsumer>,
    consumer: PullConsumer,
    handler: Arc<H>,
    counters: Arc<ConsumerCounters>,
}

impl<H: Handler> Runner<H> {
    async fn run(self, mut shutdown: Shutdown) {
        let config = &self.spec.config;
        while !shutdown.is_requested() {
            let fetch = self.consumer.fetch().max_messages(config.batch).expires(config.fetch_wait).messages();
            let batch = tokio::select! {
                () = shutdown.requested() => break,
                batch = fetch => batch,
            };
            let messages: Vec<Message> = match batch {
                Ok(batch) => batch.filter_map(|m| async move { m.ok() }).collect().await,
                Err(e) => {
                    tracing::warn!(consumer = %self.spec.durable, error = %e, "fetch failed; retrying");
                    tokio::select! {
                        () = shutdown.requested() => break,
                        () = tokio::time::sleep(config.fetch_wait) => continue,
                    }
                }
            };
            let groups = group(messages, config.per_key);
            let runner = &self;
            futures::stream::iter(groups)
                .for_each_concurrent(config.concurrency, |group| async move {
                    for msg in group {
                        runner.handle(msg).await;
                    }
                })
                .await;
        }
    }

    async fn handle(&self, msg: Message) {
        let (stream_seq, delivered) = match msg.info() {
            Ok(info) => {
                (format!("{}:{}", info.stream, info.stream_sequence), u64::try_from(info.delivered).unwrap_or(1))
            }
            Err(_) => (String::new(), 1),
        };
        let mut delivery =
            Delivery::new(msg.subject.as_str(), stream_seq, msg.payload.to_vec()).with_attempt(delivered);
        if let Some(headers) = &msg.headers {
            for (name, values) in headers.iter() {
                for value in values {
                    delivery = delivery.with_header(name.as_ref() as &str, value.as_str());
                }
            }
        }
        let span = delivery_span(&self.spec.durable, &delivery);
        let subject = delivery.subject.clone();
        let outcome = guarded_handle(self.handler.as_ref(), delivery, &span).await;
        let _enter = span.enter();
        let label = self.spec.durable.as_str();
        match outcome {
            Ok(processed) => {
                let counted = match processed {
                    Processed::Done(()) => Counted::Processed,
                    Processed::Duplicate => Counted::Duplicate,
                };
                if let Err(e) = msg.ack().await {
                    tracing::warn!(error = %e, "ack failed; the message will be redelivered (and skipped by the inbox)");
                    return;
                }
                self.counters.count(counted, label);
            }
            Err(e) if e.is_retryable() && delivered < self.spec.config.max_deliveries => {
                let delay = self.spec.config.retry_delay(delivered);
                tracing::warn!(error = %e, ?delay, "handler failed; redelivering later");
                self.nak(&msg, delay).await;
                self.counters.count(Counted::Retried, label);
            }
            Err(e) => {
                tracing::error!(error = %e, deliveries = delivered, "dead-lettering");
                if let Err(publish) = self.dead_letter(&msg, &subject, delivered, &e).await {
                    tracing::warn!(error = %publish, "dead-letter publish failed; redelivering later");
                    self.nak(&msg, self.spec.config.retry_delay(delivered)).await;
                    return;
                }
                if let Err(e) = msg.ack_with(AckKind::Term).await {
                    tracing::warn!(error = %e, "term failed after dead-lettering");
                }
                self.counters.count(Counted::DeadLettered, label);
            }
        }
    }

    async fn nak(&self, msg: &Message, delay: Duration) {
        if let Err(e) = msg.ack_with(AckKind::Nak(Some(delay))).await {
            tracing::warn!(error = %e, "nak failed; the message comes back after ack_wait");
        }
    }

    /// Publishes a copy of `msg` with the error to the dead-letter subject, and waits for
    /// JetStream to store it.
    async fn dead_letter(&self, msg: &Message, subject: &str, delivered: u64, err: &HandlerError) -> Result<()> {
        let mut headers = HeaderMap::new();
        if let Some(original) = &msg.headers {
            for (name, values) in original.iter() {
                // The original's dedup id would make its dead letter a duplicate.
                if (name.as_ref() as &str).eq_ignore_ascii_case(NATS_MSG_ID) {
                    continue;
                }
                for value in values {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
        headers.insert(HEADER_ERROR, err.to_string().replace(['\r', '\n'], " ").as_str());
        headers.insert(HEADER_ORIGINAL_SUBJECT, subject);
        headers.insert(HEADER_DELIVERIES, delivered.to_string().as_str());
        let ack = self
            .spec
            .js
            .publish_with_headers(self.spec.dead_letter_subject.clone(), headers, msg.payload.clone())
            .await
            .map_err(|e| temporary("dead-letter publish", e))?;
        ack.await.map(|_| ()).map_err(|e| temporary("dead-letter publish", e))
    }
}

/// Per key: one group per key in delivery order, plus one group per keyless message.
/// Otherwise one group per message.
fn group(messages: Vec<Message>, per_key: bool) -> Vec<Vec<Message>> {
    if !per_key {
        return messages.into_iter().map(|m| vec![m]).collect();
    }
    let mut groups: Vec<Vec<Message>> = Vec::new();
    let mut by_key: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for msg in messages {
        let key = msg.headers.as_ref().and_then(|h| h.get(HEADER_KEY)).map(|v| v.as_str().to_owned());
        match key {
            Some(key) => match by_key.get(&key) {
                Some(&i) => groups[i].push(msg),
                None => {
                    by_key.insert(key, groups.len());
                    groups.push(vec![msg]);
                }
            },
            None => groups.push(vec![msg]),
        }
    }
    groups
}
