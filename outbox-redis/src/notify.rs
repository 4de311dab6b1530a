//! A cross-process notifier on Redis pub/sub.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use outbox_core::{Error, MessageId, Notice, NoticeStream, Notifier, Result};
use redis::aio::{ConnectionManager, PubSubSink, PubSubStream};

use crate::config::DEFAULT_CONNECTION_TIMEOUT;
use crate::error::{connect_with_timeouts, map_err, timed_out};

/// Counter: notices this notifier failed to send.
pub const NOTIFY_ERRORS: &str = "outbox_redis_notify_errors_total";

/// The longest `notify` may hold up a writer; the fallback sweep covers a notice given up on.
const SEND_TIMEOUT: Duration = Duration::from_millis(250);

/// Default interval between liveness pings on a subscription.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);

/// Wakes relays in other processes: `notify` PUBLISHes the committed ids (one message per
/// transaction, one id per line) on a channel; `subscribe` turns them into
/// [`Notice::Committed`], and an empty or unreadable payload into [`Notice::Wake`].
///
/// Pub/sub keeps nothing, so a subscription never hides a disconnect: when its connection
/// closes, or a heartbeat `PING` (every 15 s by default) gets no reply in time (a stalled
/// server or a half-open connection), the stream yields an error and ends, and the relay
/// resubscribes and sweeps. `notify` never fails the writer nor holds it up for more than
/// 250 ms: errors are logged and counted ([`RedisNotifier::errors`], metric
/// `outbox_redis_notify_errors_total`).
///
/// ```no_run
/// # async fn run() -> outbox_core::Result<()> {
/// use outbox_core::Notifier;
/// use outbox_redis::RedisNotifier;
///
/// let notifier = RedisNotifier::connect("redis://127.0.0.1:6379", "outbox:notify").await?;
/// notifier.notify(&[outbox_core::MessageId::new()]).await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisNotifier {
    client: redis::Client,
    publisher: ConnectionManager,
    channel: String,
    heartbeat: Duration,
    errors: Arc<AtomicU64>,
}

impl std::fmt::Debug for RedisNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisNotifier")
            .field("channel", &self.channel)
            .field("heartbeat", &self.heartbeat)
            .finish_non_exhaustive()
    }
}

impl RedisNotifier {
    /// A notifier on `channel` of the server at `url`. An empty channel
    /// (`redis.notify_channel`) or a malformed URL (`redis.url`) is a configuration error; an
    /// unreachable server is a temporary error naming the URL.
    pub async fn connect(url: &str, channel: impl Into<String>) -> Result<Self> {
        let channel = channel.into();
        if channel.is_empty() {
            return Err(Error::config("redis.notify_channel", "must not be empty"));
        }
        let client = crate::error::client(url)?;
        let publisher = connect_with_timeouts(url, DEFAULT_CONNECTION_TIMEOUT, SEND_TIMEOUT).await?;
        Ok(Self { client, publisher, channel, heartbeat: DEFAULT_HEARTBEAT, errors: Arc::default() })
    }

    /// How often a subscription pings the server to find a dead connection (default 15 s;
    /// 10 ms to 10 min, `redis.notify_heartbeat`). A ping unanswered within the interval (at
    /// most 5 s) ends the subscription.
    pub fn heartbeat(mut self, every: Duration) -> Result<Self> {
        if !(Duration::from_millis(10)..=Duration::from_secs(600)).contains(&every) {
            return Err(Error::config("redis.notify_heartbeat", "must be between 10 ms and 10 min"));
        }
        self.heartbeat = every;
        Ok(self)
    }

    /// The channel notices go on.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Notices this notifier failed to send so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    fn failed(&self, error: &dyn std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(NOTIFY_ERRORS).increment(1);
        tracing::warn!(%error, channel = %self.channel, "Redis notice not sent; the fallback sweep will publish");
    }
}

#[async_trait]
impl Notifier for RedisNotifier {
    async fn notify(&self, ids: &[MessageId]) {
        if ids.is_empty() {
            return;
        }
        let mut conn = self.publisher.clone();
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(&self.channel).arg(Notice::encode_ids(ids));
        match tokio::time::timeout(SEND_TIMEOUT, publish.query_async::<i64>(&mut conn)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => self.failed(&e),
            Err(_) => self.failed(&timed_out("PUBLISH", SEND_TIMEOUT)),
        }
    }

    async fn subscribe(&self) -> Result<NoticeStream> {
        let what = format_args!("cannot subscribe to `{}`", self.channel).to_string();
        let pubsub = tokio::time::timeout(DEFAULT_CONNECTION_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| timed_out(&what, DEFAULT_CONNECTION_TIMEOUT))?
            .map_err(|e| map_err(&what, e))?;
        let (mut sink, messages) = pubsub.split();
        let wait = self.reply_wait();
        tokio::time::timeout(wait, sink.subscribe(&self.channel))
            .await
            .map_err(|_| timed_out(&what, wait))?
            .map_err(|e| map_err(&what, e))?;
        let mut ticks = tokio::time::interval(self.heartbeat);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.reset(); // the first tick of an interval fires at once
        let sub = Subscription { sink, messages, ticks, wait, channel: self.channel.clone(), ended: false };
        Ok(Box::pin(futures::stream::unfold(sub, Subscription::next)))
    }
}

impl RedisNotifier {
    fn reply_wait(&self) -> Duration {
        self.heartbeat.min(crate::config::DEFAULT_RESPONSE_TIMEOUT)
    }
}

/// A live subscription: notices, with a heartbeat to find a dead connection.
struct Subscription {
    sink: PubSubSink,
    messages: PubSubStream,
    ticks: tokio::time::Interval,
    wait: Duration,
    channel: String,
    ended: bool,
}

impl Subscription {
    async fn next(mut self) -> Option<(Result<Notice>, Self)> {
        if self.ended {
            return None;
        }
        loop {
            tokio::select! {
                message = self.messages.next() => {
                    let item = match message {
                        Some(m) => Ok(Notice::decode(m.get_payload_bytes())),
                        None => self.end("the pub/sub connection closed"),
                    };
                    return Some((item, self));
                }
                _ = self.ticks.tick() => {
                    match tokio::time::timeout(self.wait, self.sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => continue,
                        Ok(Err(e)) => {
                            let item = self.end(&format!("heartbeat failed: {e}"));
                            return Some((item, self));
                        }
                        Err(_) => {
                            let item = self.end(&format!("heartbeat unanswered within {:?}", self.wait));
                            return Some((item, self));
                        }
                    }
                }
            }
        }
    }

    /// The error that tells the relay to resubscribe and sweep; the stream ends after it.
    fn end(&mut self, why: &str) -> Result<Notice> {
        self.ended = true;
        tracing::warn!(channel = %self.channel, "Redis notifier subscription lost: {why}");
        Err(Error::temporary("redis", format!("subscription to `{}` lost: {why}", self.channel), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse_to_ids_or_wake() {
        let a = MessageId::new();
        assert_eq!(Notice::decode(format!("{a}\n").as_bytes()), Notice::Committed(vec![a]));
        assert_eq!(Notice::decode(b""), Notice::Wake);
        assert_eq!(Notice::decode(b"garbage"), Notice::Wake);
    }
}
