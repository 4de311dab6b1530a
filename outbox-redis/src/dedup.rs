//! Broker-side dedup: which mode a server gets (from its version), the Lua script, and the
//! IDMP stream settings and hit detection.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox_core::{Error, Result};
use redis::Value;

use crate::classify::is_retryable_code;
use crate::config::{Dedup, DedupMode, IDMP_MAX_SIZE};
use crate::conn::Conn;

/// The IDMP producer id: the outbox message id alone identifies a message.
pub(crate) const IDMP_PRODUCER: &str = "outbox";

/// A consumer group created and destroyed at once, only to create an empty stream that
/// `XCFGSET` can configure before the first entry goes in.
const INIT_GROUP: &str = "outbox-idmp-init";

/// `SET NX PX` on the dedup key, then `XADD` only if the key was new; an `XADD` error removes
/// the key again so a retry is not mistaken for a duplicate. Both run under `pcall` and their
/// errors are returned as they are, so the reply keeps the server's error code (before Redis 7
/// an error raised in a script came back as `ERR`).
pub(crate) const SCRIPT: &str = r"
local set = redis.pcall('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1])
if type(set) == 'table' and set.err then return set end
if not set then return false end
local args = {'XADD', KEYS[2]}
if ARGV[2] ~= '0' then
  table.insert(args, 'MAXLEN'); table.insert(args, '~'); table.insert(args, ARGV[2])
end
table.insert(args, '*')
for i = 3, #ARGV do table.insert(args, ARGV[i]) end
local res = redis.pcall(unpack(args))
if type(res) == 'table' and res.err then redis.call('DEL', KEYS[1]) end
return res
";

/// The mode for `dedup` on a server of `version` (major, minor): IDMP needs Redis ≥ 8.6.
pub(crate) fn choose_mode(dedup: Dedup, version: (u32, u32)) -> DedupMode {
    let idmp = version >= (8, 6);
    match dedup {
        Dedup::Off => DedupMode::None,
        Dedup::Lua => DedupMode::Lua,
        Dedup::Auto | Dedup::IdmpOrLua if idmp => DedupMode::Idmp,
        Dedup::Auto | Dedup::IdmpOrLua => DedupMode::Lua,
    }
}

/// The server's (major, minor) version from `INFO server`; (0, 0) when it does not say.
pub(crate) async fn server_version(conn: &Conn, within: Duration) -> Result<(u32, u32)> {
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

/// The streams whose IDMP settings this process knows to be in place.
#[derive(Clone, Default)]
pub(crate) struct IdmpStreams(Arc<Mutex<HashSet<String>>>);

impl IdmpStreams {
    /// Puts the IDMP settings for `window` on every stream of `streams` not yet seen here.
    /// `XCFGSET` clears a stream's id map, so a stream that already has these settings (set
    /// by another relay) is left alone, and a new stream is created empty and configured
    /// before its first entry.
    pub(crate) async fn configure<'a>(
        &self,
        conn: &Conn,
        streams: impl IntoIterator<Item = &'a str>,
        window: Duration,
        within: Duration,
    ) -> Result<()> {
        let fresh: HashSet<&str> = {
            let ready = self.0.lock().unwrap_or_else(|e| e.into_inner());
            streams.into_iter().filter(|s| !ready.contains(*s)).collect()
        };
        let want = (window.as_millis().div_ceil(1000) as i64, i64::from(IDMP_MAX_SIZE));
        let done = futures::future::join_all(fresh.into_iter().map(|s| configure_stream(conn, s, want, within))).await;
        let mut ready = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for outcome in done {
            if let Some(stream) = outcome? {
                ready.insert(stream);
            }
        }
        Ok(())
    }
}

/// `Some(stream)` once configured; `None` when the key holds something else (its XADDs will
/// fail permanently, and it is checked again next time). A temporary refusal (e.g. `OOM`) is
/// an error, so the batch is retried and the stream configured then, not left at the server's
/// defaults.
async fn configure_stream(conn: &Conn, stream: &str, want: (i64, i64), within: Duration) -> Result<Option<String>> {
    let mut look = redis::pipe();
    look.ignore_errors().cmd("TYPE").arg(stream).cmd("XINFO").arg("STREAM").arg(stream);
    let reply = conn.pipeline(&look, within).await?;
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
    let reply = conn.pipeline(&set, within).await?;
    let refused = reply.iter().find_map(|v| match v {
        Value::ServerError(e) if is_retryable_code(e.code()) => Some(e),
        _ => None,
    });
    if let Some(e) = refused {
        return Err(Error::temporary("redis", format!("cannot set IDMP on stream `{stream}` for now: {e}"), None));
    }
    match reply.last() {
        Some(Value::ServerError(e)) => {
            tracing::warn!(stream, error = %e, "cannot set IDMP retention; the server defaults apply");
        }
        _ => tracing::info!(stream, duration_s = want.0, max_size = want.1, "IDMP retention set"),
    }
    Ok(Some(stream.to_owned()))
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
pub(crate) fn server_millis(time: &Value) -> Option<u64> {
    let (secs, micros): (u64, u64) = redis::from_redis_value_ref(time).ok()?;
    Some(secs * 1000 + micros / 1000)
}

/// The millisecond part of a stream entry id (`<ms>-<seq>`).
pub(crate) fn entry_millis(id: &Value) -> Option<u64> {
    let id: String = redis::from_redis_value_ref(id).ok()?;
    id.split_once('-')?.0.parse().ok()
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
        assert_eq!(choose_mode(Dedup::Auto, (7, 0)), DedupMode::Lua);
        assert_eq!(choose_mode(Dedup::Auto, (8, 4)), DedupMode::Lua);
        assert_eq!(choose_mode(Dedup::Auto, (8, 6)), DedupMode::Idmp);
        assert_eq!(choose_mode(Dedup::Auto, (0, 0)), DedupMode::Lua, "a server that hides its version");
        assert_eq!(choose_mode(Dedup::IdmpOrLua, (8, 4)), DedupMode::Lua);
        assert_eq!(choose_mode(Dedup::IdmpOrLua, (9, 0)), DedupMode::Idmp);
        assert_eq!(choose_mode(Dedup::Lua, (8, 6)), DedupMode::Lua);
        assert_eq!(choose_mode(Dedup::Off, (8, 6)), DedupMode::None);
        assert_eq!(choose_mode(Dedup::default(), (7, 0)), DedupMode::Lua, "the default dedups on every version");
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
