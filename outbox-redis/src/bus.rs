//! The Redis Streams bus: one pipelined round trip of XADDs per batch.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use outbox_core::{Bus, OutboxMessage, PublishOutcome, Result};
use redis::aio::ConnectionManager;
use redis::{ServerErrorKind, Value};

use crate::config::{Dedup, DedupMode, IDMP_MAX_SIZE, RedisBusConfig, StreamMapping, dedup_key};
use crate::error::{connect_with_timeouts, map_err, timed_out};

/// The field that holds the payload; every broker header is a field of its own name.
pub const PAYLOAD_FIELD: &str = "payload";

/// The IDMP producer id: the outbox message id alone identifies a message.
const IDMP_PRODUCER: &str = "outbox";

/// A consumer group created and destroyed at once, only to create an empty stream that
/// `XCFGSET` can configure before the first entry goes in.
const INIT_GROUP: &str = "outbox-idmp-init";

/// `SET NX PX` on the dedup key, then `XADD` only if the key was new; an `XADD` error removes
/// the key again so a retry is not mistaken for a duplicate.
const DEDUP_SCRIPT: &str = r"
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  local args = {'XADD', KEYS[2]}
  if ARGV[2] ~= '0' then
    table.insert(args, 'MAXLEN'); table.insert(args, '~'); table.insert(args, ARGV[2])
  end
  table.insert(args, '*')
  for i = 3, #ARGV do table.insert(args, ARGV[i]) end
  local res = redis.pcall(unpack(args))
  if type(res) == 'table' and res.err then redis.call('DEL', KEYS[1]) end
  return res
end
return false
";

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Conn {
    /// Runs `pipe` (keys of one slot on a cluster) with every server error kept per command.
    async fn pipeline(&self, pipe: &redis::Pipeline, within: Duration) -> Result<Vec<Value>> {
        let reply = match self.clone() {
            Conn::Single(mut c) => tokio::time::timeout(within, pipe.query_async(&mut c)).await,
            #[cfg(feature = "cluster")]
            Conn::Cluster(mut c) => tokio::time::timeout(within, pipe.query_async(&mut c)).await,
        };
        reply.map_err(|_| timed_out("Redis pipeline", within))?.map_err(|e| map_err("Redis pipeline", e))
    }

    /// Runs one command; unlike a pipeline, a node-wide command such as `SCRIPT LOAD` reaches
    /// every node of a cluster.
    async fn command(&self, cmd: &redis::Cmd, within: Duration) -> Result<Value> {
        let what = "Redis command";
        let reply = match self.clone() {
            Conn::Single(mut c) => tokio::time::timeout(within, cmd.query_async(&mut c)).await,
            #[cfg(feature = "cluster")]
            Conn::Cluster(mut c) => tokio::time::timeout(within, cmd.query_async(&mut c)).await,
        };
        reply.map_err(|_| timed_out(what, within))?.map_err(|e| map_err(what, e))
    }
}

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
///     .dedup(Dedup::IdmpOrLua)
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
    /// Streams whose IDMP settings are known to be in place.
    idmp_ready: Arc<Mutex<HashSet<String>>>,
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
    /// Trim each stream to about `n` entries (`MAXLEN ~ n`).
    pub fn max_len(mut self, n: usize) -> Self {
        self.config.max_len = Some(n);
        self
    }
    /// Dedup strategy (default [`Dedup::Auto`]).
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
        let version = server_version(&conn, config.response_timeout).await?;
        let mode = choose_mode(config.dedup, version);
        let script = redis::Script::new(DEDUP_SCRIPT);
        if mode == DedupMode::Lua {
            // Saves the first batch a NOSCRIPT round trip (on every node of a cluster); a
            // restarted or new node is handled in `send`.
            conn.command(redis::cmd("SCRIPT").arg("LOAD").arg(DEDUP_SCRIPT), config.response_timeout).await?;
        }
        let server = format!("{}.{}", version.0, version.1);
        if mode == DedupMode::None && config.dedup == Dedup::Auto {
            tracing::info!(%server, ?mode, "redis streams bus ready; no broker dedup (IDMP needs Redis >= 8.6): use Dedup::Lua or Dedup::IdmpOrLua to drop redeliveries");
        } else {
            tracing::info!(%server, ?mode, "redis streams bus ready");
        }
        Ok(RedisStreamsBus { conn, config, mode, script, idmp_ready: Arc::default() })
    }
}

fn choose_mode(dedup: Dedup, version: (u32, u32)) -> DedupMode {
    let idmp = version >= (8, 6);
    match dedup {
        Dedup::Off => DedupMode::None,
        Dedup::Lua => DedupMode::Lua,
        Dedup::Auto | Dedup::IdmpOrLua if idmp => DedupMode::Idmp,
        Dedup::Auto => DedupMode::None,
        Dedup::IdmpOrLua => DedupMode::Lua,
    }
}

async fn server_version(conn: &Conn, within: Duration) -> Result<(u32, u32)> {
    let mut info = redis::pipe();
    info.cmd("INFO").arg("server");
    let reply = conn.pipeline(&info, within).await?;
    let text = match reply.into_iter().next() {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(&b).into_owned(),
        Some(Value::VerbatimString { text, .. }) => text,
        _ => String::new(),
    };
    Ok(parse_version(&text))
}

fn parse_version(info: &str) -> (u32, u32) {
    let v = info.lines().find_map(|l| l.strip_prefix("redis_version:")).unwrap_or("0.0");
    let mut parts = v.trim().split('.').map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
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
                    cmd.arg("IDMP").arg(IDMP_PRODUCER).arg(&p.id);
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
            pipe.cmd("SCRIPT").arg("LOAD").arg(DEDUP_SCRIPT);
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
        let started_ms = if clock { replies.next().as_ref().and_then(server_millis) } else { None };
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
                    Some(entry) => Some(match (started_ms, entry_millis(&entry)) {
                        (Some(started), Some(at)) if at < started => PublishOutcome::Duplicate,
                        _ => PublishOutcome::Published,
                    }),
                };
                (p.index, outcome)
            })
            .collect()
    }

    /// Puts this bus's IDMP settings on every stream of `items` not yet seen by this process.
    /// `XCFGSET` clears a stream's id map, so a stream that already has these settings (set by
    /// another relay) is left alone, and a new stream is created empty and configured before
    /// its first entry.
    async fn configure_idmp(&self, items: &[Prepared]) -> Result<()> {
        let fresh: HashSet<&str> = {
            let ready = self.idmp_ready.lock().unwrap_or_else(|e| e.into_inner());
            items.iter().map(|p| p.stream.as_str()).filter(|s| !ready.contains(*s)).collect()
        };
        let done = futures::future::join_all(fresh.into_iter().map(|s| self.configure_stream(s))).await;
        let mut ready = self.idmp_ready.lock().unwrap_or_else(|e| e.into_inner());
        for outcome in done {
            if let Some(stream) = outcome? {
                ready.insert(stream);
            }
        }
        Ok(())
    }

    /// `Some(stream)` once configured; `None` when the key holds something else (its XADDs
    /// will fail permanently, and it is checked again next time).
    async fn configure_stream(&self, stream: &str) -> Result<Option<String>> {
        let within = self.config.response_timeout;
        let want = (self.config.dedup_window.as_millis().div_ceil(1000) as i64, i64::from(IDMP_MAX_SIZE));
        let mut look = redis::pipe();
        look.ignore_errors().cmd("TYPE").arg(stream).cmd("XINFO").arg("STREAM").arg(stream);
        let reply = self.conn.pipeline(&look, within).await?;
        let kind = match reply.first() {
            Some(Value::SimpleString(s)) => s.as_str(),
            _ => "",
        };
        let mut set = redis::pipe();
        set.ignore_errors();
        match kind {
            "stream" if reply.get(1).and_then(idmp_settings) == Some(want) => return Ok(Some(stream.to_owned())),
            "stream" => {
                tracing::warn!(stream, "setting IDMP on an existing stream clears the ids it remembered");
            }
            "none" => {
                set.cmd("XGROUP").arg("CREATE").arg(stream).arg(INIT_GROUP).arg("$").arg("MKSTREAM");
                set.cmd("XGROUP").arg("DESTROY").arg(stream).arg(INIT_GROUP);
            }
            _ => return Ok(None),
        }
        set.cmd("XCFGSET").arg(stream).arg("IDMP-DURATION").arg(want.0).arg("IDMP-MAXSIZE").arg(want.1);
        let reply = self.conn.pipeline(&set, within).await?;
        match reply.last() {
            Some(Value::ServerError(e)) => {
                tracing::warn!(stream, error = %e, "cannot set IDMP retention; the server defaults apply");
            }
            _ => tracing::info!(stream, duration_s = want.0, max_size = want.1, "IDMP retention set"),
        }
        Ok(Some(stream.to_owned()))
    }
}

/// `IDMP-DURATION` and `IDMP-MAXSIZE` from an `XINFO STREAM` reply.
fn idmp_settings(info: &Value) -> Option<(i64, i64)> {
    let mut duration = None;
    let mut max_size = None;
    for (k, v) in info.as_map_iter()? {
        let slot = match k {
            Value::BulkString(k) if k == b"idmp-duration" => &mut duration,
            Value::BulkString(k) if k == b"idmp-maxsize" => &mut max_size,
            Value::SimpleString(k) if k == "idmp-duration" => &mut duration,
            Value::SimpleString(k) if k == "idmp-maxsize" => &mut max_size,
            _ => continue,
        };
        *slot = redis::from_redis_value_ref::<i64>(v).ok();
    }
    Some((duration?, max_size?))
}

/// Milliseconds from a `TIME` reply.
fn server_millis(time: &Value) -> Option<u64> {
    let (secs, micros): (u64, u64) = redis::from_redis_value_ref(time).ok()?;
    Some(secs * 1000 + micros / 1000)
}

/// The millisecond part of a stream entry id (`<ms>-<seq>`).
fn entry_millis(id: &Value) -> Option<u64> {
    let id: String = redis::from_redis_value_ref(id).ok()?;
    id.split_once('-')?.0.parse().ok()
}

fn classify(stream: &str, e: &redis::ServerError) -> PublishOutcome {
    use ServerErrorKind as K;
    match e.kind() {
        Some(K::BusyLoading | K::TryAgain | K::ClusterDown | K::MasterDown | K::ReadOnly | K::Moved | K::Ask) => {
            PublishOutcome::Retryable(format!("Redis is not ready for `{stream}`: {e}"))
        }
        _ => PublishOutcome::Permanent(format!("Redis rejected the entry for stream `{stream}`: {e}")),
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
        if self.mode == DedupMode::Idmp
            && let Err(e) = self.configure_idmp(&ready).await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_info() {
        assert_eq!(parse_version("# Server\r\nredis_version:7.0.15\r\n"), (7, 0));
        assert_eq!(parse_version("redis_version:8.6.1\n"), (8, 6));
        assert_eq!(parse_version(""), (0, 0));
    }

    #[test]
    fn the_mode_follows_the_server_version() {
        assert_eq!(choose_mode(Dedup::Auto, (7, 0)), DedupMode::None);
        assert_eq!(choose_mode(Dedup::Auto, (8, 6)), DedupMode::Idmp);
        assert_eq!(choose_mode(Dedup::IdmpOrLua, (8, 4)), DedupMode::Lua);
        assert_eq!(choose_mode(Dedup::IdmpOrLua, (9, 0)), DedupMode::Idmp);
        assert_eq!(choose_mode(Dedup::Lua, (8, 6)), DedupMode::Lua);
        assert_eq!(choose_mode(Dedup::Off, (8, 6)), DedupMode::None);
    }

    #[test]
    fn idmp_settings_read_from_xinfo_in_resp2_and_resp3() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let resp2 = Value::Array(vec![
            b("length"),
            Value::Int(3),
            b("idmp-duration"),
            Value::Int(600),
            b("idmp-maxsize"),
            Value::Int(10_000),
        ]);
        assert_eq!(idmp_settings(&resp2), Some((600, 10_000)));
        let resp3 = Value::Map(vec![(b("idmp-maxsize"), Value::Int(100)), (b("idmp-duration"), Value::Int(100))]);
        assert_eq!(idmp_settings(&resp3), Some((100, 100)));
        assert_eq!(idmp_settings(&Value::Array(vec![b("length"), Value::Int(3)])), None, "not configured");
    }

    #[test]
    fn an_idmp_hit_is_told_by_its_older_entry_id() {
        let time = Value::Array(vec![Value::BulkString(b"1700000000".to_vec()), Value::BulkString(b"123456".to_vec())]);
        assert_eq!(server_millis(&time), Some(1_700_000_000_123));
        assert_eq!(entry_millis(&Value::BulkString(b"1700000000100-3".to_vec())), Some(1_700_000_000_100));
        assert_eq!(entry_millis(&Value::Okay), None);
    }
}
