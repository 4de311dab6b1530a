//! Which server refusals are temporary, judged by the error code Redis sends (the first word of
//! the error reply), since redis-rs names only some of them.

use outbox_core::PublishOutcome;
use redis::ServerError;

/// Codes of refusals that pass without anyone changing the message: the same command can
/// succeed later. Every other code (`WRONGTYPE`, `ERR`, `CROSSSLOT`, `NOPERM`, `NOAUTH`, …) is
/// permanent.
const RETRYABLE: &[&str] = &[
    // Out of memory under `maxmemory-policy noeviction`, until consumers trim or memory grows.
    "OOM",
    // `stop-writes-on-bgsave-error`: writes stop while snapshots fail (e.g. a full disk).
    "MISCONF",
    // `min-replicas-to-write` not met, until replicas reconnect.
    "NOREPLICAS",
    // A script or function is running past `busy-reply-threshold`.
    "BUSY",
    // The server is loading its dataset after a restart.
    "LOADING",
    // A replica that lost its master (`replica-serve-stale-data no`).
    "MASTERDOWN",
    // A write reached a replica: a failover is under way.
    "READONLY",
    // Cluster slots uncovered, a resharding in progress, or a slot moved.
    "CLUSTERDOWN",
    "TRYAGAIN",
    "MOVED",
    "ASK",
];

/// Whether a server error code names a temporary refusal (see [`RETRYABLE`]).
pub(crate) fn is_retryable_code(code: &str) -> bool {
    RETRYABLE.contains(&code)
}

/// The outcome of one command Redis refused: `Retryable` for the codes in [`RETRYABLE`], so a
/// memory spike or a failover does not dead-letter whole batches; `Permanent` otherwise.
pub(crate) fn classify(stream: &str, e: &ServerError) -> PublishOutcome {
    let code = e.code();
    let refusal = match e.details() {
        Some(details) => format!("{code} {details}"),
        None => code.to_owned(),
    };
    if is_retryable_code(code) {
        PublishOutcome::Retryable(format!("Redis refused the entry for stream `{stream}` for now: {refusal}"))
    } else {
        PublishOutcome::Permanent(format!("Redis rejected the entry for stream `{stream}`: {refusal}"))
    }
}

/// The server error of an error reply such as `OOM command not allowed …`.
#[cfg(test)]
pub(crate) fn server_error(reply: &str) -> ServerError {
    match redis::parse_redis_value(format!("-{reply}\r\n").as_bytes()) {
        Ok(redis::Value::ServerError(e)) => e,
        other => panic!("not a server error: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(reply: &str) -> PublishOutcome {
        classify("s", &server_error(reply))
    }

    #[test]
    fn temporary_refusals_are_retryable_by_their_code() {
        for reply in [
            "OOM command not allowed when used memory > 'maxmemory'.",
            "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.",
            "NOREPLICAS Not enough good replicas to write.",
            "BUSY Redis is busy running a script.",
            "LOADING Redis is loading the dataset in memory",
            "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
            "READONLY You can't write against a read only replica.",
            "CLUSTERDOWN The cluster is down",
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "MOVED 3999 127.0.0.1:6381",
            "ASK 3999 127.0.0.1:6381",
        ] {
            let code = reply.split(' ').next().unwrap_or_default();
            assert!(matches!(outcome(reply), PublishOutcome::Retryable(r) if r.contains(reply)), "{code}");
        }
    }

    #[test]
    fn other_refusals_are_permanent_and_say_why() {
        for reply in [
            "WRONGTYPE Operation against a key holding the wrong kind of value",
            "ERR The ID specified in XADD is equal or smaller than the target stream top item",
            "CROSSSLOT Keys in request don't hash to the same slot",
            "NOPERM this user has no permissions to run the 'xadd' command",
            "NOAUTH Authentication required.",
            "SOMETHINGNEW from a later server",
        ] {
            assert!(matches!(outcome(reply), PublishOutcome::Permanent(r) if r.contains(reply) && r.contains("`s`")));
        }
    }
}
