//! A cross-process notifier on Redis pub/sub.

use async_trait::async_trait;
use futures::StreamExt;
use outbox_core::{Error, MessageId, Notice, NoticeStream, Notifier, Result};
use redis::aio::ConnectionManager;

use crate::error::map_err;

/// Counter: notices this notifier failed to send.
pub const NOTIFY_ERRORS: &str = "outbox_redis_notify_errors_total";

/// Wakes relays in other processes: `notify` PUBLISHes the committed ids (one message per
/// transaction) on a channel; `subscribe` turns them into [`Notice::Committed`].
///
/// Pub/sub keeps nothing: when the subscription connection drops, the stream ends, and the
/// relay resubscribes and sweeps, so notices lost meanwhile only cost latency.
#[derive(Clone)]
pub struct RedisNotifier {
    client: redis::Client,
    publisher: ConnectionManager,
    channel: String,
}

impl std::fmt::Debug for RedisNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisNotifier").field("channel", &self.channel).finish_non_exhaustive()
    }
}

impl RedisNotifier {
    /// A notifier on `channel` of the server at `url`.
    pub async fn connect(url: &str, channel: impl Into<String>) -> Result<Self> {
        let channel = channel.into();
        if channel.is_empty() {
            return Err(Error::config("redis.notify_channel", "must not be empty"));
        }
        let client = redis::Client::open(url)
            .map_err(|e| Error::config("redis.url", format!("`{url}` is not a Redis URL: {e}")))?;
        let publisher = crate::error::connect(url).await?;
        Ok(Self { client, publisher, channel })
    }
}

#[async_trait]
impl Notifier for RedisNotifier {
    async fn notify(&self, ids: &[MessageId]) {
        if ids.is_empty() {
            return;
        }
        let payload = Notice::encode_ids(ids);
        let mut conn = self.publisher.clone();
        let sent: redis::RedisResult<i64> =
            redis::cmd("PUBLISH").arg(&self.channel).arg(payload).query_async(&mut conn).await;
        if let Err(e) = sent {
            metrics::counter!(NOTIFY_ERRORS).increment(1);
            tracing::warn!(error = %e, channel = %self.channel, "Redis notice not sent; the fallback will publish");
        }
    }

    async fn subscribe(&self) -> Result<NoticeStream> {
        let mut pubsub = self
            .client
            .get_async_pubsub()
            .await
            .map_err(|e| map_err(format_args!("cannot open a pub/sub connection for `{}`", self.channel), e))?;
        pubsub
            .subscribe(&self.channel)
            .await
            .map_err(|e| map_err(format_args!("cannot subscribe to `{}`", self.channel), e))?;
        // The stream ends when the connection drops; the relay then resubscribes and sweeps.
        Ok(Box::pin(pubsub.into_on_message().map(|m| Ok(Notice::decode(m.get_payload_bytes())))))
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
