//! The Redis Streams bus: one pipelined round trip of XADDs per batch.

use std::time::Duration;

use async_trait::async_trait;
use outbox_core::{Bus, OutboxMessage, PublishOutcome, Result};
use redis::aio::ConnectionManager;
use redis::{ServerErrorKind, Value};

use crate::classify::classify;
use crate::config::{Dedup, DedupMode, RedisBusConfig, StreamMapping, dedup_key};
use crate::conn::Conn;
use crate::dedup::{self, IdmpStreams};
use crate::error::connect_with_timeouts;

/// The field that holds the payload; every broker header is a field of its own name.
pub const PAYLOAD_FIELD: &str = "payload";

/// Publishes batches to Redis Streams as one pipeline per batch (per hash slot on a
/// cluster). Fields: `payload`, plus one field per broker header (`Outbox-Message-Id`,
/// `Outbox-Topic`, `Outbox-Key`, and the message's own headers).
///
/// ```no_run
/// # async fn run() -> outbox_core::Result<()> {
/// use std::time::Duration;
/// use outbox_redis::{Dedup, RedisStreamsBus};
///
/// let bus = RedisStreamsBus::from_url("redis://127.0.0.1:6379")
///     .stream_prefix("events:")
///     .max_len(1_000_000)
///     .dedup(Dedup::Lua)
///     .response_timeout(Duration::from_secs(2))
///     .build()
///     .await?;
/// # let _ = bus; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStreamsBus {
    conn: Conn,
    config: RedisBusConfig,
    mode: DedupMode,
    script: redis::Script,
    idmp: IdmpStreams,
}

impl std::fmt::Debug for RedisStreamsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStreamsBus")
            .field("config", &self.config)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

enum Source {
    Conn(Conn),
    Url(String),
}

/// Settings for a [`RedisStreamsBus`]; [`build`](RedisBusBuilder::build) validates them and
/// detects the server's dedup support.
#[must_use]
pub struct RedisBusBuilder {
    source: Source,
    config: RedisBusConfig,
}

impl RedisBusBuilder {
    /// Stream key = `prefix` + topic (default `outbox:`).
    pub fn stream_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config.streams = StreamMapping::Prefix(prefix.into());
        self
    }
    /// Any topic → stream key rule.
    pub fn streams(mut self, mapping: StreamMapping) -> Self {
        self.config.streams = mapping;
        self
    }
    /// Trim each stream to about `n` entries (`MAXLEN ~ n`). Redis trims regardless of
    /// consumer groups, so entries not yet read (or not acknowledged) go too once a stream is
    /// past `n`: keep `n` above the largest backlog a consumer may fall behind by.
    pub fn max_len(mut self, n: usize) -> Self {
        self.config.max_len = Some(n);
        self
    }
    /// Dedup strategy. The default, [`Dedup::Auto`], dedups on every server: `XADD … IDMP` on
    /// Redis ≥ 8.6, the Lua script before; [`Dedup::Off`] turns it off.
    pub fn dedup(mut self, dedup: Dedup) -> Self {
        self.config.dedup = dedup;
        self
    }
    /// How long ids are remembered for dedup (default 10 minutes).
    pub fn dedup_window(mut self, window: Duration) -> Self {
        self.config.dedup_window = window;
        self
    }
    /// Longest wait for a batch's replies (default 5 s).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.config.response_timeout = timeout;
        self
    }
    /// Longest wait for a connection when the bus connects itself (default 5 s).
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.config.connection_timeout = timeout;
        self
    }
    /// Replaces all settings.
    pub fn config(mut self, config: RedisBusConfig) -> Self {
        self.config = config;
        self
    }

    /// Validates the settings, connects (for [`RedisStreamsBus::from_url`]), reads the server
    /// version (`INFO server`) and logs the dedup mode chosen.
    pub async fn build(self) -> Result<RedisStreamsBus> {
        let config = self.config;
        config.validate()?;
        let conn = match self.source {
            Source::Conn(c) => c,
            Source::Url(url) => {
                Conn::Single(connect_with_timeouts(&url, config.connection_timeout, config.response_timeout).await?)
            }
        };
        let version = dedup::server_version(&conn, config.response_timeout).await?;
        let mode = dedup::choose_mode(config.dedup, version);
        let script = redis::Script::new(dedup::SCRIPT);
        if mode == DedupMode::Lua {
            // Saves the first batch a NOSCRIPT round trip (on every node of a cluster); a
            // restarted or new node is handled in `send`.
            let what = "cannot load the dedup script (SCRIPT LOAD; Dedup::Off publishes without broker dedup)";
            conn.command(what, redis::cmd("SCRIPT").arg("LOAD").arg(dedup::SCRIPT), config.response_timeout).await?;
        }
        let server = format!("{}.{}", version.0, version.1);
        tracing::info!(%server, ?mode, "redis streams bus ready");
        Ok(RedisStreamsBus { conn, config, mode, script, idmp: IdmpStreams::default() })
    }
}

/// A message ready to send: its place in the batch, stream key and XADD fields.
#[derive(Clone)]
struct Prepared {
    index: usize,
    stream: String,
    id: String,
    fields: Vec<(String, Vec<u8>)>,
}

impl RedisStreamsBus {
    /// Starts building a bus on a single-node connection (see [`crate::connect`]).
    pub fn builder(conn: ConnectionManager) -> RedisBusBuilder {
        RedisBusBuilder { source: Source::Conn(Conn::Single(conn)), config: RedisBusConfig::default() }
    }

    /// Starts building a bus that connects to `url` itself, with the builder's connection
    /// and response timeouts; a malformed URL is a configuration error (`redis.url`).
    pub fn from_url(url: impl Into<String>) -> RedisBusBuilder {
        RedisBusBuilder { source: Source::Url(url.into()), config: RedisBusConfig::default() }
    }

    /// Starts building a bus on a Redis Cluster connection (set its timeouts on the
    /// `ClusterClientBuilder`; the bus's response timeout bounds each pipeline as well).
    #[cfg(feature = "cluster")]
    pub fn cluster_builder(conn: redis::cluster_async::ClusterConnection) -> RedisBusBuilder {
        RedisBusBuilder { source: Source::Conn(Conn::Cluster(conn)), config: RedisBusConfig::default() }
    }

    /// The dedup mode chosen at build time.
    pub fn dedup_mode(&self) -> DedupMode {
        self.mode
    }

    /// The settings in force.
    pub fn config(&self) -> &RedisBusConfig {
        &self.config
    }

    /// The stream key a message goes to.
    pub fn stream_key(&self, msg: &OutboxMessage) -> String {
        self.config.streams.stream_key(msg)
    }

    fn prepare(&self, index: usize, msg: &OutboxMessage) -> std::result::Result<Prepared, String> {
        let stream = self.stream_key(msg);
        if stream.is_empty() {
            return Err("the stream key is empty".into());
        }
        let mut fields = vec![(PAYLOAD_FIELD.to_owned(), msg.payload.clone())];
        for (name, value) in msg.broker_headers() {
            if name == PAYLOAD_FIELD {
                return Err(format!("header name `{PAYLOAD_FIELD}` is reserved for the payload field"));
            }
            fields.push((name.to_owned(), value.as_bytes().to_vec()));
        }
        let id = msg.id.to_string();
        #[cfg(feature = "cluster")]
        if self.mode == DedupMode::Lua
            && matches!(self.conn, Conn::Cluster(_))
            && crate::cluster::slot(&dedup_key(&stream, &id)) != crate::cluster::slot(&stream)
        {
            // A `}` outside a hash tag ends the tag the dedup key wraps the stream key in; the
            // script would fail with CROSSSLOT, and would fail its whole pipeline if another
            // stream shared the slot.
            return Err(format!(
                "stream `{stream}` and its dedup key hash to different cluster slots (a `}}` outside a \
                 hash tag); give the stream key a hash tag, e.g. `outbox:{{orders}}`"
            ));
        }
        Ok(Prepared { index, stream, id, fields })
    }

    fn command(&self, p: &Prepared) -> redis::Cmd {
        let max_len = self.config.max_len.unwrap_or(0);
        match self.mode {
            DedupMode::Lua => {
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(self.script.get_hash()).arg(2).arg(dedup_key(&p.stream, &p.id)).arg(&p.stream);
                cmd.arg(self.config.dedup_window.as_millis() as u64).arg(max_len);
                for (k, v) in &p.fields {
                    cmd.arg(k).arg(v.as_slice());
                }
                cmd
            }
            DedupMode::None | DedupMode::Idmp => {
                let mut cmd = redis::cmd("XADD");
                cmd.arg(&p.stream);
                if self.mode == DedupMode::Idmp {
                    cmd.arg("IDMP").arg(dedup::IDMP_PRODUCER).arg(&p.id);
                }
                if max_len > 0 {
                    cmd.arg("MAXLEN").arg("~").arg(max_len);
                }
                cmd.arg("*");
                for (k, v) in &p.fields {
                    cmd.arg(k).arg(v.as_slice());
                }
                cmd
            }
        }
    }

    /// One pipeline for `items` (all in one slot on a cluster); reloads the script once if
    /// the server lost it (a restart, or a cluster node that never had it). `clock` prefixes
    /// the pipeline with `TIME` so an IDMP hit (which replies with the old entry's id) can be
    /// told from a new entry.
    async fn send(&self, conn: &Conn, items: &[Prepared], clock: bool) -> Vec<(usize, PublishOutcome)> {
        let mut out = self.send_once(conn, items, clock, false).await;
        let lost: Vec<usize> = out.iter().filter(|(_, o)| o.is_none()).map(|(i, _)| *i).collect();
        if !lost.is_empty() {
            let retry: Vec<Prepared> = items.iter().filter(|p| lost.contains(&p.index)).cloned().collect();
            for (i, o) in self.send_once(conn, &retry, clock, true).await {
                if let Some(slot) = out.iter_mut().find(|(j, _)| *j == i) {
                    slot.1 = Some(o.unwrap_or_else(|| PublishOutcome::Retryable("the dedup script is missing".into())));
                }
            }
        }
        out.into_iter().map(|(i, o)| (i, o.unwrap_or_else(|| PublishOutcome::Retryable("no reply".into())))).collect()
    }

    /// `None` for a message whose script was missing (NOSCRIPT). `load` puts `SCRIPT LOAD`
    /// in the same pipeline: a cluster sends a keyless command alone to a random node, but
    /// within this pipeline it reaches the node that runs the scripts.
    async fn send_once(
        &self,
        conn: &Conn,
        items: &[Prepared],
        clock: bool,
        load: bool,
    ) -> Vec<(usize, Option<PublishOutcome>)> {
        let clock = clock && self.mode == DedupMode::Idmp;
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        if load {
            pipe.cmd("SCRIPT").arg("LOAD").arg(dedup::SCRIPT);
        }
        if clock {
            pipe.cmd("TIME");
        }
        for p in items {
            pipe.add_command(self.command(p));
        }
        let mut replies = match conn.pipeline(&pipe, self.config.response_timeout).await {
            Ok(v) => v.into_iter(),
            Err(e) => {
                // Connection lost, timeout, I/O: the entries may or may not be in; retry them.
                let reason = e.to_string();
                return items.iter().map(|p| (p.index, Some(PublishOutcome::Retryable(reason.clone())))).collect();
            }
        };
        let load_failed = match load.then(|| replies.next()).flatten() {
            Some(Value::ServerError(e)) => Some(format!("cannot load the dedup script: {e}")),
            _ => None,
        };
        let started_ms = if clock { replies.next().as_ref().and_then(dedup::server_millis) } else { None };
        items
            .iter()
            .map(|p| {
                let outcome = match replies.next() {
                    None => Some(PublishOutcome::Retryable("no reply for this command".into())),
                    Some(Value::Nil) if self.mode == DedupMode::Lua => Some(PublishOutcome::Duplicate),
                    Some(Value::ServerError(e)) if e.kind() == Some(ServerErrorKind::NoScript) => {
                        load_failed.clone().map(PublishOutcome::Retryable)
                    }
                    Some(Value::ServerError(e)) => Some(classify(&p.stream, &e)),
                    Some(entry) => Some(match (started_ms, dedup::entry_millis(&entry)) {
                        (Some(started), Some(at)) if at < started => PublishOutcome::Duplicate,
                        _ => PublishOutcome::Published,
                    }),
                };
                (p.index, outcome)
            })
            .collect()
    }
}

#[async_trait]
impl Bus for RedisStreamsBus {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<PublishOutcome> {
        let mut outcomes: Vec<Option<PublishOutcome>> = vec![None; batch.len()];
        let mut ready = Vec::with_capacity(batch.len());
        for (i, msg) in batch.iter().enumerate() {
            match self.prepare(i, msg) {
                Ok(p) => ready.push(p),
                Err(reason) => outcomes[i] = Some(PublishOutcome::Permanent(reason)),
            }
        }
        if !ready.is_empty() {
            let sent = match self.send_all(ready).await {
                Ok(sent) => sent,
                Err((items, e)) => {
                    let reason = e.to_string();
                    items.iter().map(|p| (p.index, PublishOutcome::Retryable(reason.clone()))).collect()
                }
            };
            for (i, o) in sent {
                outcomes[i] = Some(o);
            }
        }
        outcomes.into_iter().map(|o| o.unwrap_or_else(|| PublishOutcome::Retryable("not sent".into()))).collect()
    }
}

impl RedisStreamsBus {
    /// One pipeline per batch, or per hash slot on a cluster.
    async fn send_all(
        &self,
        ready: Vec<Prepared>,
    ) -> std::result::Result<Vec<(usize, PublishOutcome)>, (Vec<Prepared>, outbox_core::Error)> {
        let (window, within) = (self.config.dedup_window, self.config.response_timeout);
        if self.mode == DedupMode::Idmp
            && let Err(e) =
                self.idmp.configure(&self.conn, ready.iter().map(|p| p.stream.as_str()), window, within).await
        {
            return Err((ready, e));
        }
        match &self.conn {
            Conn::Single(_) => Ok(self.send(&self.conn, &ready, true).await),
            // A keyless TIME may run on another node, whose clock says nothing: IDMP hits
            // count as published there.
            #[cfg(feature = "cluster")]
            Conn::Cluster(_) => {
                let groups = crate::cluster::group_by_slot(ready, |p| p.stream.as_str());
                let sends = groups.iter().map(|g| self.send(&self.conn, g, false));
                Ok(futures::future::join_all(sends).await.into_iter().flatten().collect())
            }
        }
    }
}
