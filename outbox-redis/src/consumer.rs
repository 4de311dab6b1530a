//! The consumer side on Redis Streams: a consumer group runner that reads with `XREADGROUP`,
//! runs a [`Handler`] per entry, `XACK`s only after it returned, takes over entries another
//! consumer left pending for longer than `ack_wait` (`XAUTOCLAIM`: a dead consumer's, or a
//! failed delivery's) and moves what keeps failing to a dead-letter stream.
//!
//! A retryable failure leaves the entry pending; it is claimed again after
//! [`ConsumerConfig::ack_wait`] (Redis has no delayed NAK, so that is the retry delay).
//!
//! On a Redis Cluster (feature `cluster`, `RedisStreamsConsumer::cluster`) the stream and
//! the dead-letter stream may live in different slots; see [`RedisStreamsConsumer::new`] for
//! what that changes when an entry is dead-lettered.
//!
//! ```no_run
//! # async fn run() -> outbox_core::Result<()> {
//! use outbox_core::consumer::{Delivery, Processed, handler_fn};
//! use outbox_redis::consumer::RedisStreamsConsumer;
//!
//! let conn = outbox_redis::connect("redis://127.0.0.1:6379").await?;
//! let handler = handler_fn(|d: Delivery| async move {
//!     println!("{}", d.id);
//!     Ok(Processed::Done(()))
//! });
//! let consumer = RedisStreamsConsumer::new(conn, "outbox:orders", "shipping", "shipping-1", "dead:orders")
//!     .spawn(handler)
//!     .await?;
//! consumer.shutdown().await?;
//! # Ok(()) }
//! ```

use std::sync::Arc;

use futures::StreamExt;
pub use outbox_core::consumer::ConsumerHandle;
use outbox_core::consumer::{
    ConsumerConfig, ConsumerCounters, Counted, Delivery, Handler, Processed, Shutdown, delivery_span, guarded_handle,
};
use outbox_core::{Error, Result};
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::streams::{StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, Cmd, Pipeline, RedisFuture, Value};

use crate::bus::PAYLOAD_FIELD;
use crate::conn::Conn;

/// Field of a dead letter: the last error.
pub const FIELD_ERROR: &str = "Outbox-Error";
/// Field of a dead letter: the entry's id in its stream.
pub const FIELD_ORIGINAL_ID: &str = "Outbox-Original-Id";
/// Field of a dead letter: how many times it was delivered.
pub const FIELD_DELIVERIES: &str = "Outbox-Deliveries";

/// Dead-lettering within one slot: `XADD` to `KEYS[1]`, and only if it succeeded `XACK` of
/// entry `ARGV[2]` in `KEYS[2]` for group `ARGV[1]`; `ARGV[3..]` are the letter's fields. The
/// `XADD` runs under `pcall` and its error is returned as it is, keeping the server's error
/// code (before Redis 7 an error raised in a script came back as `ERR`). `replicate_commands`
/// lets Redis 5 write after the non-deterministic `XADD *` (a no-op from Redis 7).
const DEAD_LETTER_SCRIPT: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local added = redis.pcall('XADD', KEYS[1], '*', unpack(ARGV, 3))
if type(added) == 'table' and added.err then return added end
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
return added
";

/// A Redis Streams consumer group runner, not yet running; [`spawn`](Self::spawn) starts it.
#[derive(Clone)]
pub struct RedisStreamsConsumer {
    conn: Conn,
    stream: String,
    group: String,
    consumer: String,
    dead_letter_stream: String,
    config: ConsumerConfig,
    dead_letter_script: redis::Script,
}

impl std::fmt::Debug for RedisStreamsConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStreamsConsumer")
            .field("stream", &self.stream)
            .field("group", &self.group)
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

impl RedisStreamsConsumer {
    /// Consumer `consumer` of group `group` on `stream`, dead-lettering to
    /// `dead_letter_stream`. The group is created at the stream's start if missing.
    ///
    /// When both streams are in one slot (always on one server; on a cluster with a shared
    /// hash tag: `{orders}` and `dead:{orders}`), one Lua script adds the dead letter and
    /// only then acknowledges the entry. A script runs atomically on the server, so a crash
    /// or lost connection leaves neither or both; an `XADD` that fails (e.g. `WRONGTYPE`: the
    /// dead-letter key holds something else) stops the script before the `XACK`, so the entry
    /// stays pending and is delivered again after `ack_wait`, dead-lettered once the key can
    /// take it. (A `MULTI`/`EXEC` would not do: it runs the `XACK` after a failed `XADD`.)
    /// Redis does not undo a script's writes, so an `XACK` that fails after the `XADD` (the
    /// group was destroyed meanwhile) leaves the letter added.
    ///
    /// On a cluster with the streams in different slots, one script cannot span them: the
    /// dead letter is added first, then the entry acknowledged. A failed `XADD` leaves the
    /// entry pending as above; a crash (or a failed `XACK`) between the two leaves it pending
    /// too, so after `ack_wait` it is delivered again and, if it fails again, dead-lettered
    /// again: a duplicate dead letter with the same [`FIELD_ORIGINAL_ID`].
    pub fn new(
        conn: ConnectionManager,
        stream: impl Into<String>,
        group: impl Into<String>,
        consumer: impl Into<String>,
        dead_letter_stream: impl Into<String>,
    ) -> Self {
        Self::on(Conn::Single(conn), stream.into(), group.into(), consumer.into(), dead_letter_stream.into())
    }

    /// The same consumer on a Redis Cluster; the two streams may be in any slots (see
    /// [`new`](Self::new) for how a dead letter moves between two slots).
    #[cfg(feature = "cluster")]
    pub fn cluster(
        conn: redis::cluster_async::ClusterConnection,
        stream: impl Into<String>,
        group: impl Into<String>,
        consumer: impl Into<String>,
        dead_letter_stream: impl Into<String>,
    ) -> Self {
        Self::on(Conn::Cluster(conn), stream.into(), group.into(), consumer.into(), dead_letter_stream.into())
    }

    fn on(conn: Conn, stream: String, group: String, consumer: String, dead_letter_stream: String) -> Self {
        let dead_letter_script = redis::Script::new(DEAD_LETTER_SCRIPT);
        Self {
            conn,
            stream,
            group,
            consumer,
            dead_letter_stream,
            config: ConsumerConfig::default(),
            dead_letter_script,
        }
    }

    /// Sets the runner settings (default [`ConsumerConfig::default`]; `per_key` and
    /// `backoff` are not used here: entries are handled in parallel and retried after
    /// `ack_wait`).
    pub fn config(mut self, config: ConsumerConfig) -> Self {
        self.config = config;
        self
    }

    /// Validates the settings, creates the group if needed and starts reading.
    pub async fn spawn<H: Handler>(self, handler: H) -> Result<ConsumerHandle> {
        self.config.validate()?;
        for (field, value) in [("consumer.group", &self.group), ("consumer.name", &self.consumer)] {
            if value.is_empty() {
                return Err(Error::config(field, "must not be empty"));
            }
        }
        let mut conn = self.conn.clone();
        let created: redis::RedisResult<()> = conn.xgroup_create_mkstream(&self.stream, &self.group, "0").await;
        if let Err(e) = created
            && e.code() != Some("BUSYGROUP")
        {
            return Err(crate::map_err(format!("XGROUP CREATE {} {}", self.stream, self.group), e));
        }
        let spec = Arc::new(self);
        Ok(ConsumerHandle::spawn("redis", move |shutdown, counters| {
            Runner { spec, handler: Arc::new(handler), counters }.run(shutdown)
        }))
    }

    /// Whether one script can run the dead letter's `XADD` and the `XACK`: not across two
    /// cluster slots (`CROSSSLOT`).
    fn dead_letter_is_atomic(&self) -> bool {
        match &self.conn {
            Conn::Single(_) => true,
            #[cfg(feature = "cluster")]
            Conn::Cluster(_) => crate::cluster::slot(&self.stream) == crate::cluster::slot(&self.dead_letter_stream),
        }
    }
}

/// The runner's commands go through the single-node or cluster connection alike; the cluster
/// one routes each command (and a one-slot pipeline) to the slot's master.
impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

struct Runner<H> {
    spec: Arc<RedisStreamsConsumer>,
    handler: Arc<H>,
    counters: Arc<ConsumerCounters>,
}

impl<H: Handler> Runner<H> {
    async fn run(self, mut shutdown: Shutdown) {
        let config = &self.spec.config;
        let mut conn = self.spec.conn.clone();
        while !shutdown.is_requested() {
            let read = self.read(&mut conn);
            let entries = tokio::select! {
                () = shutdown.requested() => break,
                entries = read => entries,
            };
            let entries = match entries {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::warn!(group = %self.spec.group, error = %e, "read failed; retrying");
                    tokio::select! {
                        () = shutdown.requested() => break,
                        () = tokio::time::sleep(config.fetch_wait) => continue,
                    }
                }
            };
            let runner = &self;
            futures::stream::iter(entries)
                .for_each_concurrent(config.concurrency, |(entry, delivered)| async move {
                    runner.handle(entry, delivered).await;
                })
                .await;
        }
    }

    /// Entries left pending too long (with their delivery counts), else new ones.
    async fn read(&self, conn: &mut Conn) -> redis::RedisResult<Vec<(StreamId, u64)>> {
        let spec = &self.spec;
        let idle = u64::try_from(spec.config.ack_wait.as_millis()).unwrap_or(u64::MAX);
        let options = StreamAutoClaimOptions::default().count(spec.config.batch);
        let claimed: StreamAutoClaimReply =
            conn.xautoclaim_options(&spec.stream, &spec.group, &spec.consumer, idle, "0-0", options).await?;
        if !claimed.claimed.is_empty() {
            let mut out = Vec::with_capacity(claimed.claimed.len());
            for entry in claimed.claimed {
                let pending: redis::streams::StreamPendingCountReply =
                    conn.xpending_count(&spec.stream, &spec.group, &entry.id, &entry.id, 1).await?;
                let delivered = pending.ids.first().map_or(2, |p| p.times_delivered as u64);
                out.push((entry, delivered));
            }
            return Ok(out);
        }
        let block = usize::try_from(spec.config.fetch_wait.as_millis()).unwrap_or(usize::MAX);
        let options =
            StreamReadOptions::default().group(&spec.group, &spec.consumer).count(spec.config.batch).block(block);
        let reply: Option<StreamReadReply> = conn.xread_options(&[&spec.stream], &[">"], &options).await?;
        Ok(reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).map(|e| (e, 1)).collect())
    }

    async fn handle(&self, entry: StreamId, delivered: u64) {
        let spec = &self.spec;
        let payload: Vec<u8> = entry.get(PAYLOAD_FIELD).unwrap_or_default();
        let mut delivery = Delivery::new(spec.stream.as_str(), entry.id.as_str(), payload).with_attempt(delivered);
        for name in entry.map.keys().filter(|k| k.as_str() != PAYLOAD_FIELD) {
            if let Some(value) = entry.get::<String>(name) {
                delivery = delivery.with_header(name.as_str(), value);
            }
        }
        let span = delivery_span(&spec.group, &delivery);
        let outcome = guarded_handle(self.handler.as_ref(), delivery, &span).await;
        let _enter = span.enter();
        let mut conn = spec.conn.clone();
        let label = spec.group.as_str();
        match outcome {
            Ok(done) => {
                let counted = match done {
                    Processed::Done(()) => Counted::Processed,
                    Processed::Duplicate => Counted::Duplicate,
                };
                let acked: redis::RedisResult<u64> = conn.xack(&spec.stream, &spec.group, &[&entry.id]).await;
                if let Err(e) = acked {
                    tracing::warn!(error = %e, "XACK failed; the entry will be claimed again (and skipped by the inbox)");
                    return;
                }
                self.counters.count(counted, label);
            }
            Err(e) if e.is_retryable() && delivered < spec.config.max_deliveries => {
                tracing::warn!(error = %e, "handler failed; the entry is claimed again after ack_wait");
                self.counters.count(Counted::Retried, label);
            }
            Err(e) => {
                tracing::error!(error = %e, deliveries = delivered, "dead-lettering");
                let mut fields: Vec<(String, Vec<u8>)> =
                    entry.map.keys().filter_map(|k| entry.get::<Vec<u8>>(k).map(|v| (k.clone(), v))).collect();
                fields.push((FIELD_ERROR.to_owned(), e.to_string().into_bytes()));
                fields.push((FIELD_ORIGINAL_ID.to_owned(), entry.id.clone().into_bytes()));
                fields.push((FIELD_DELIVERIES.to_owned(), delivered.to_string().into_bytes()));
                if spec.dead_letter_is_atomic() {
                    // One script: atomic, so a crash leaves neither or both, and a failed XADD
                    // stops it before the XACK (a MULTI would still ack and lose the letter).
                    let mut moved = spec.dead_letter_script.key(&spec.dead_letter_stream);
                    moved.key(&spec.stream).arg(&spec.group).arg(&entry.id);
                    for (name, value) in &fields {
                        moved.arg(name).arg(value);
                    }
                    let moved: redis::RedisResult<String> = moved.invoke_async(&mut conn).await;
                    if let Err(e) = moved {
                        tracing::warn!(error = %e, "dead-lettering failed; the entry is claimed again after ack_wait");
                        return;
                    }
                } else {
                    // Two slots: the letter first, so a failure in between duplicates it
                    // rather than losing it.
                    let added: redis::RedisResult<String> = conn.xadd(&spec.dead_letter_stream, "*", &fields).await;
                    if let Err(e) = added {
                        tracing::warn!(error = %e, "dead-lettering failed; the entry is claimed again after ack_wait");
                        return;
                    }
                    let acked: redis::RedisResult<u64> = conn.xack(&spec.stream, &spec.group, &[&entry.id]).await;
                    if let Err(e) = acked {
                        tracing::warn!(
                            error = %e,
                            "dead letter added but XACK failed; the entry is claimed again after ack_wait and may be \
                             dead-lettered twice"
                        );
                        return;
                    }
                }
                self.counters.count(Counted::DeadLettered, label);
            }
        }
    }
}
