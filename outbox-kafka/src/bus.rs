//! The Kafka bus: a batch is enqueued into one idempotent producer at once, then every
//! delivery report is awaited together.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use outbox_core::{Bus, OutboxMessage, PublishOutcome, Result};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Statistics};

use crate::config::{KafkaBusConfig, TopicMapping, invalid_topic};
use crate::error::{map_err, outcome};

/// How often a message retries its enqueue while librdkafka's queue is full.
const QUEUE_FULL_POLL: Duration = Duration::from_millis(5);

/// Routes librdkafka's log lines and global errors to `tracing` (target `outbox_kafka`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Context;

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(facility, message, "librdkafka")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(facility, message, "librdkafka"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => tracing::info!(facility, message, "librdkafka"),
            RDKafkaLogLevel::Debug => tracing::debug!(facility, message, "librdkafka"),
        }
    }

    fn stats(&self, statistics: Statistics) {
        tracing::debug!(?statistics, "librdkafka statistics");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Brokers down, a failed connection: librdkafka reconnects by itself, and the messages
        // it cannot deliver in time come back as retryable delivery reports.
        tracing::warn!(%error, reason, "kafka client error");
    }
}

/// The idempotent producer the bus sends through.
pub type Producer = FutureProducer<Context>;

/// Publishes batches to Kafka through one idempotent librdkafka producer
/// (`enable.idempotence=true`, `acks=all`, at most 5 requests in flight per connection).
///
/// Each message becomes one record: the message key is the record key (so one key stays in
/// one partition, in order), the payload is the value, and every broker header
/// (`Outbox-Message-Id`, `Outbox-Topic`, `Outbox-Key`, the message's own) is a record header.
/// A batch is enqueued whole, then its delivery reports are awaited together; each message
/// gets the outcome of its own report (see the crate docs for which error is which).
///
/// ```no_run
/// # fn run() -> outbox_core::Result<()> {
/// use std::time::Duration;
/// use outbox_kafka::KafkaBus;
///
/// let bus = KafkaBus::builder("127.0.0.1:9092")
///     .topic_prefix("events.")
///     .delivery_timeout(Duration::from_secs(10))
///     .option("compression.type", "lz4")
///     .build()?;
/// # let _ = bus; Ok(()) }
/// ```
#[derive(Clone)]
pub struct KafkaBus {
    inner: Arc<Inner>,
}

struct Inner {
    config: KafkaBusConfig,
    /// The producer and its generation; a fatal error replaces both.
    producer: RwLock<(u64, Producer)>,
    restarts: AtomicU64,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("config", &self.inner.config)
            .field("restarts", &self.restarts())
            .finish_non_exhaustive()
    }
}

/// Settings for a [`KafkaBus`]; [`build`](KafkaBusBuilder::build) validates them and creates
/// the producer (it connects in the background, on first use).
#[must_use]
#[derive(Debug)]
pub struct KafkaBusBuilder {
    config: KafkaBusConfig,
}

impl KafkaBusBuilder {
    /// Kafka topic = `prefix` + outbox topic.
    pub fn topic_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config.topics = TopicMapping::Prefix(prefix.into());
        self
    }
    /// Any outbox message → Kafka topic rule (default: the outbox topic as is).
    pub fn topics(mut self, mapping: TopicMapping) -> Self {
        self.config.topics = mapping;
        self
    }
    /// How long librdkafka retries one message before failing it, retryable (default 10 s).
    pub fn delivery_timeout(mut self, timeout: Duration) -> Self {
        self.config.delivery_timeout = timeout;
        self
    }
    /// How long one produce request waits for the broker (default 5 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout = timeout;
        self
    }
    /// Produce requests in flight per broker connection, 1 to 5 (default 5).
    pub fn max_in_flight(mut self, n: u32) -> Self {
        self.config.max_in_flight = n;
        self
    }
    /// How long librdkafka waits to fill a produce request (default 5 ms).
    pub fn linger(mut self, linger: Duration) -> Self {
        self.config.linger = linger;
        self
    }
    /// How long a message waits for room in a full producer queue (default 1 s).
    pub fn enqueue_timeout(mut self, timeout: Duration) -> Self {
        self.config.enqueue_timeout = timeout;
        self
    }
    /// How long a topic the broker does not know is waited for before its messages fail
    /// `Permanent` (default 5 s; capped at the delivery timeout).
    pub fn missing_topic_timeout(mut self, timeout: Duration) -> Self {
        self.config.missing_topic_timeout = timeout;
        self
    }
    /// `client.id` (default `outbox`).
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.config.client_id = id.into();
        self
    }
    /// Whether producing may create a missing topic, where the broker allows it (default
    /// `false`: a missing topic is a `Permanent` failure).
    pub fn auto_create_topics(mut self, on: bool) -> Self {
        self.config.auto_create_topics = on;
        self
    }
    /// Any other librdkafka property (`security.protocol`, `sasl.*`, `compression.type`, …);
    /// the ones the bus sets itself are refused by [`build`](Self::build).
    pub fn option(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.options.insert(name.into(), value.into());
        self
    }
    /// Replaces all settings.
    pub fn config(mut self, config: KafkaBusConfig) -> Self {
        self.config = config;
        self
    }

    /// Validates the settings and creates the producer. No broker is contacted yet: see
    /// [`KafkaBus::check`] to find out whether one answers.
    pub fn build(self) -> Result<KafkaBus> {
        self.config.validate()?;
        let producer = create(&self.config)?;
        tracing::info!(servers = %self.config.bootstrap_servers, "kafka bus ready (idempotent producer)");
        Ok(KafkaBus {
            inner: Arc::new(Inner {
                config: self.config,
                producer: RwLock::new((0, producer)),
                restarts: AtomicU64::new(0),
            }),
        })
    }
}

fn create(config: &KafkaBusConfig) -> Result<Producer> {
    let mut client = ClientConfig::new();
    for (name, value) in config.client_properties() {
        client.set(name, value);
    }
    client.create_with_context(Context).map_err(|e| map_err("cannot create the Kafka producer", e))
}

impl KafkaBus {
    /// Starts building a bus for `bootstrap_servers` (`host:port`, comma-separated).
    pub fn builder(bootstrap_servers: impl Into<String>) -> KafkaBusBuilder {
        KafkaBusBuilder { config: KafkaBusConfig::new(bootstrap_servers) }
    }

    /// The settings in force.
    pub fn config(&self) -> &KafkaBusConfig {
        &self.inner.config
    }

    /// The Kafka topic a message goes to.
    pub fn topic(&self, msg: &OutboxMessage) -> String {
        self.inner.config.topics.topic(msg)
    }

    /// The producer in use (it changes after a fatal error).
    pub fn producer(&self) -> Producer {
        self.current().1
    }

    /// How many times a fatal producer error made the bus start a new producer.
    pub fn restarts(&self) -> u64 {
        self.inner.restarts.load(Ordering::Relaxed)
    }

    /// Asks a broker for the cluster metadata within `timeout`: an error (temporary) says no
    /// broker answered. Use it for a readiness check; publishing does not need it.
    pub async fn check(&self, timeout: Duration) -> Result<()> {
        let producer = self.producer();
        let servers = self.inner.config.bootstrap_servers.clone();
        let fetched = tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(None, Timeout::After(timeout)).map(|m| m.brokers().len())
        })
        .await
        .map_err(|e| outbox_core::Error::temporary("kafka", format!("the metadata request panicked: {e}"), None))?;
        match fetched {
            Ok(brokers) => {
                tracing::debug!(brokers, "kafka metadata fetched");
                Ok(())
            }
            Err(e) => Err(map_err(format_args!("no Kafka broker at {servers} answered within {timeout:?}"), e)),
        }
    }

    fn current(&self) -> (u64, Producer) {
        let guard = self.inner.producer.read().unwrap_or_else(|p| p.into_inner());
        (guard.0, guard.1.clone())
    }

    /// Replaces a producer that hit a fatal error (its idempotence state is lost, so it
    /// refuses every record), unless another batch already did.
    fn restart(&self, generation: u64, reason: &str) {
        let fresh = match create(&self.inner.config) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot replace the fatal Kafka producer; retrying on the next batch");
                return;
            }
        };
        let old = {
            let mut guard = self.inner.producer.write().unwrap_or_else(|p| p.into_inner());
            if guard.0 != generation {
                return;
            }
            std::mem::replace(&mut *guard, (generation + 1, fresh)).1
        };
        self.inner.restarts.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(reason, "the Kafka producer hit a fatal error; a new one replaces it");
        // Dropping purges its queue and joins its polling thread: keep that off the runtime.
        drop(tokio::task::spawn_blocking(move || drop(old)));
    }

    /// Enqueues one record, waiting up to the enqueue timeout while the queue is full.
    async fn enqueue(
        &self,
        producer: &Producer,
        topic: &str,
        msg: &OutboxMessage,
    ) -> std::result::Result<DeliveryFuture, PublishOutcome> {
        let headers =
            msg.broker_headers().fold(OwnedHeaders::new_with_capacity(3 + msg.headers.len()), |h, (key, value)| {
                h.insert(Header { key, value: Some(value.as_bytes()) })
            });
        let mut record = FutureRecord::to(topic).payload(msg.payload.as_slice()).headers(headers);
        if let Some(key) = &msg.key {
            record = record.key(key.as_bytes());
        }
        let deadline = tokio::time::Instant::now() + self.inner.config.enqueue_timeout;
        loop {
            match producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if tokio::time::Instant::now() < deadline =>
                {
                    record = back;
                    tokio::time::sleep(QUEUE_FULL_POLL).await;
                }
                Err((e, _)) => return Err(outcome(topic, &e)),
            }
        }
    }
}

#[async_trait]
impl Bus for KafkaBus {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<PublishOutcome> {
        if batch.is_empty() {
            return Vec::new();
        }
        let (generation, producer) = self.current();
        let mut outcomes: Vec<Option<PublishOutcome>> = vec![None; batch.len()];
        let mut deliveries = Vec::with_capacity(batch.len());
        for (i, msg) in batch.iter().enumerate() {
            let topic = self.topic(msg);
            if let Some(reason) = invalid_topic(&topic) {
                outcomes[i] = Some(PublishOutcome::Permanent(reason));
                continue;
            }
            match self.enqueue(&producer, &topic, msg).await {
                Ok(delivery) => deliveries.push((i, topic, delivery)),
                Err(failed) => outcomes[i] = Some(failed),
            }
        }
        let reports = futures::future::join_all(deliveries.into_iter().map(|(i, topic, delivery)| async move {
            let o = match delivery.await {
                Ok(Ok(_)) => PublishOutcome::Published,
                Ok(Err((e, _))) => outcome(&topic, &e),
                Err(_) => PublishOutcome::Retryable(format!(
                    "the Kafka producer was replaced before the record for topic `{topic}` was reported"
                )),
            };
            (i, o)
        }))
        .await;
        for (i, o) in reports {
            outcomes[i] = Some(o);
        }
        if let Some((code, reason)) = producer.client().fatal_error() {
            self.restart(generation, &format!("{code:?}: {reason}"));
        }
        outcomes.into_iter().map(|o| o.unwrap_or_else(|| PublishOutcome::Retryable("not sent".into()))).collect()
    }
}
