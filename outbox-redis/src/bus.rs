//! The Redis Streams bus: one pipelined round trip of XADDs per batch.

use async_trait::async_trait;
use outbox_core::{Bus, OutboxMessage, PublishOutcome, Result};
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{ServerErrorKind, Value};

use crate::config::{Dedup, DedupMode, RedisBusConfig, StreamMapping, dedup_key};
use crate::error::map_err;

/// The field that holds the payload; every broker header is a field of its own name.
pub const PAYLOAD_FIELD: &str = "payload";

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

/// Publishes batches to Redis Streams as one pipeline per batch (per hash slot on a
/// cluster). Fields: `payload`, plus one field per broker header (`Outbox-Message-Id`,
/// `Outbox-Topic`, `Outbox-Key`, and the message's own headers).
///
/// ```no_run
/// # async fn run() -> outbox_core::Result<()> {
/// use outbox_redis::{Dedup, RedisStreamsBus, connect};
///
/// let conn = connect("redis://127.0.0.1:6379").await?;
/// let bus = RedisStreamsBus::builder(conn).stream_prefix("events:").max_len(1_000_000).dedup(Dedup::Lua).build().await?;
/// # let _ = bus; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStreamsBus {
    conn: Conn,
    config: RedisBusConfig,
    mode: DedupMode,
    script: redis::Script,
}

impl std::fmt::Debug for RedisStreamsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStreamsBus")
            .field("config", &self.config)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// Settings for a [`RedisStreamsBus`]; [`build`](RedisBusBuilder::build) validates them and
/// detects the server's dedup support.
#[must_use]
pub struct RedisBusBuilder {
    conn: Conn,
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
    pub fn dedup_window(mut self, window: std::time::Duration) -> Self {
        self.config.dedup_window = window;
        self
    }
    /// Replaces all settings.
    pub fn config(mut self, config: RedisBusConfig) -> Self {
        self.config = config;
        self
    }

    /// Validates the settings, reads the server version and logs the dedup mode chosen.
    pub async fn build(self) -> Result<RedisStreamsBus> {
        self.config.validate()?;
        let version = server_version(&self.conn).await?;
        let idmp = version >= (8, 6);
        let mode = match self.config.dedup {
            Dedup::Off => DedupMode::None,
            Dedup::Lua => DedupMode::Lua,
            Dedup::Auto if idmp => DedupMode::Idmp,
            Dedup::Auto => DedupMode::None,
        };
        tracing::info!(
            server = %format!("{}.{}", version.0, version.1),
            ?mode,
            "redis streams bus ready{}",
            if mode == DedupMode::None && self.config.dedup == Dedup::Auto {
                "; no broker dedup on this server (Redis < 8.6): use Dedup::Lua to drop redeliveries"
            } else {
                ""
            }
        );
        let script = redis::Script::new(DEDUP_SCRIPT);
        Ok(RedisStreamsBus { conn: self.conn, config: self.config, mode, script })
    }
}

async fn server_version(conn: &Conn) -> Result<(u32, u32)> {
    let info: String = match conn.clone() {
        Conn::Single(mut c) => redis::cmd("INFO").arg("server").query_async(&mut c).await,
        #[cfg(feature = "cluster")]
        Conn::Cluster(mut c) => redis::cmd("INFO").arg("server").query_async(&mut c).await,
    }
    .map_err(|e| map_err("cannot read the Redis server version", e))?;
    Ok(parse_version(&info))
}

fn parse_version(info: &str) -> (u32, u32) {
    let v = info.lines().find_map(|l| l.strip_prefix("redis_version:")).unwrap_or("0.0");
    let mut parts = v.trim().split('.').map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// A message ready to send: its stream key and XADD fields, or why it cannot be sent.
struct Prepared {
    index: usize,
    stream: String,
    id: String,
    fields: Vec<(String, Vec<u8>)>,
}

impl RedisStreamsBus {
    /// Starts building a bus on a single-node connection.
    pub fn builder(conn: ConnectionManager) -> RedisBusBuilder {
        RedisBusBuilder { conn: Conn::Single(conn), config: RedisBusConfig::default() }
    }

    /// Starts building a bus on a Redis Cluster connection.
    #[cfg(feature = "cluster")]
    pub fn cluster_builder(conn: redis::cluster_async::ClusterConnection) -> RedisBusBuilder {
        RedisBusBuilder { conn: Conn::Cluster(conn), config: RedisBusConfig::default() }
    }

    /// The dedup mode chosen at build time.
    pub fn dedup_mode(&self) -> DedupMode {
        self.mode
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
        Ok(Prepared { index, stream, id: msg.id.to_string(), fields })
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
                    cmd.arg("IDMP").arg("outbox").arg(&p.id);
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
    /// the server lost it (a restart).
    async fn send<C: ConnectionLike + Send>(&self, conn: &mut C, items: &[Prepared]) -> Vec<(usize, PublishOutcome)> {
        let mut out = self.send_once(conn, items).await;
        let lost: Vec<usize> = out.iter().filter(|(_, o)| o.is_none()).map(|(i, _)| *i).collect();
        if !lost.is_empty() {
            let load = redis::cmd("SCRIPT").arg("LOAD").arg(DEDUP_SCRIPT).query_async::<String>(conn).await;
            let retry: Vec<&Prepared> = items.iter().filter(|p| lost.contains(&p.index)).collect();
            let again = match load {
                Ok(_) => self.send_once(conn, &retry.into_iter().map(clone_prepared).collect::<Vec<_>>()).await,
                Err(e) => lost
                    .iter()
                    .map(|i| (*i, Some(PublishOutcome::Retryable(format!("cannot load the dedup script: {e}")))))
                    .collect(),
            };
            for (i, o) in again {
                if let Some(slot) = out.iter_mut().find(|(j, _)| *j == i) {
                    slot.1 = Some(o.unwrap_or_else(|| PublishOutcome::Retryable("the dedup script is missing".into())));
                }
            }
        }
        out.into_iter().map(|(i, o)| (i, o.unwrap_or_else(|| PublishOutcome::Retryable("no reply".into())))).collect()
    }

    /// `None` for a message whose script was missing (NOSCRIPT).
    async fn send_once<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        items: &[Prepared],
    ) -> Vec<(usize, Option<PublishOutcome>)> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for p in items {
            pipe.add_command(self.command(p));
        }
        let replies: Vec<Value> = match pipe.query_async(conn).await {
            Ok(v) => v,
            Err(e) => {
                let reason = format!("Redis pipeline failed: {e}");
                return items.iter().map(|p| (p.index, Some(PublishOutcome::Retryable(reason.clone())))).collect();
            }
        };
        items
            .iter()
            .zip(replies.into_iter().map(Some).chain(std::iter::repeat(None)))
            .map(|(p, reply)| {
                let outcome = match reply {
                    None => Some(PublishOutcome::Retryable("no reply for this command".into())),
                    Some(Value::Nil) if self.mode == DedupMode::Lua => Some(PublishOutcome::Duplicate),
                    Some(Value::ServerError(e)) if e.kind() == Some(ServerErrorKind::NoScript) => None,
                    Some(Value::ServerError(e)) => Some(classify(&p.stream, &e)),
                    Some(_) => Some(PublishOutcome::Published),
                };
                (p.index, outcome)
            })
            .collect()
    }
}

fn clone_prepared(p: &Prepared) -> Prepared {
    Prepared { index: p.index, stream: p.stream.clone(), id: p.id.clone(), fields: p.fields.clone() }
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
        let sent = match self.conn.clone() {
            Conn::Single(mut c) => self.send(&mut c, &ready).await,
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => {
                let groups = crate::cluster::group_by_slot(ready, |p| p.stream.as_str());
                let sends = groups.iter().map(|g| {
                    let mut c = c.clone();
                    async move { self.send(&mut c, g).await }
                });
                futures::future::join_all(sends).await.into_iter().flatten().collect()
            }
        };
        for (i, o) in sent {
            outcomes[i] = Some(o);
        }
        outcomes.into_iter().map(|o| o.unwrap_or_else(|| PublishOutcome::Retryable("not sent".into()))).collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_parse_from_info() {
        assert_eq!(super::parse_version("# Server\r\nredis_version:7.0.15\r\n"), (7, 0));
        assert_eq!(super::parse_version("redis_version:8.6.1\n"), (8, 6));
        assert_eq!(super::parse_version(""), (0, 0));
    }
}
