//! A cross-process notifier on a core-NATS subject.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::connection::State;
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use outbox_core::{Error, MessageId, Notice, NoticeStream, Notifier, Result};

use crate::error::temporary;

/// Counter: notices this notifier failed to send.
pub const NOTIFY_ERRORS: &str = "outbox_nats_notify_errors_total";

/// How often a subscription checks the client's connect count for a reconnect.
const RECONNECT_CHECK: Duration = Duration::from_millis(250);

/// The longest `notify` may hold up a writer; the fallback sweep covers a notice given up on.
const SEND_TIMEOUT: Duration = Duration::from_millis(250);

/// Wakes relays in other processes: `notify` publishes the committed ids (one message per
/// transaction, one id per line) on a subject; `subscribe` turns them into
/// [`Notice::Committed`], and an empty or unreadable payload into [`Notice::Wake`].
///
/// Core NATS does not keep messages, so notices sent while a relay is disconnected are lost:
/// after the client reconnects (its connect count goes up; checked every 250 ms, so a quick
/// reconnect is not missed) the stream yields [`Notice::Wake`] and the relay sweeps. When the
/// subscription ends (the client was closed or drained) the stream ends, and the relay
/// resubscribes. `notify` never fails or blocks the writer for long: errors are logged and
/// counted ([`NatsNotifier::errors`], metric `outbox_nats_notify_errors_total`).
///
/// ```no_run
/// # async fn run() -> outbox_core::Result<()> {
/// use outbox_core::Notifier;
/// use outbox_nats::{NatsNotifier, connect};
///
/// let notifier = NatsNotifier::new(connect("nats://127.0.0.1:4222").await?, "outbox.notify")?;
/// notifier.notify(&[outbox_core::MessageId::new()]).await;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct NatsNotifier {
    client: async_nats::Client,
    subject: String,
    errors: Arc<AtomicU64>,
}

impl NatsNotifier {
    /// A notifier on `subject` (e.g. `outbox.notify`); an invalid subject is a configuration
    /// error (`nats.notify_subject`).
    pub fn new(client: async_nats::Client, subject: impl Into<String>) -> Result<Self> {
        let subject = subject.into();
        if let Some(reason) = crate::config::invalid_subject(&subject) {
            return Err(Error::config("nats.notify_subject", reason));
        }
        Ok(Self { client, subject, errors: Arc::default() })
    }

    /// Notices this notifier failed to send so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    fn failed(&self, reason: impl std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(NOTIFY_ERRORS).increment(1);
        tracing::warn!(subject = %self.subject, "NATS notice not sent ({reason}); the fallback sweep will publish");
    }

    /// One id per line; a bare wake-up when the ids would not fit the server's max payload.
    fn payload(&self, ids: &[MessageId]) -> Bytes {
        let payload = Notice::encode_ids(ids);
        if payload.len() > self.client.max_payload() { Bytes::new() } else { Bytes::from(payload) }
    }
}

#[async_trait]
impl Notifier for NatsNotifier {
    async fn notify(&self, ids: &[MessageId]) {
        if ids.is_empty() {
            return;
        }
        // While disconnected the client only buffers, and relays sweep after their reconnect.
        // (A client still finishing its first handshake reports `Pending`: that one may send.)
        if self.client.connection_state() == State::Disconnected {
            return self.failed("not connected");
        }
        let send = self.client.publish(self.subject.clone(), self.payload(ids));
        match tokio::time::timeout(SEND_TIMEOUT, send).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.failed(e),
            Err(_) => self.failed(format!("not queued within {SEND_TIMEOUT:?}")),
        }
    }

    async fn subscribe(&self) -> Result<NoticeStream> {
        let sub = self
            .client
            .subscribe(self.subject.clone())
            .await
            .map_err(|e| temporary(format!("cannot subscribe to `{}`", self.subject), e))?;
        // The server must know the subscription before we report being subscribed.
        self.client
            .flush()
            .await
            .map_err(|e| temporary(format!("cannot confirm the subscription to `{}`", self.subject), e))?;
        let notices = sub.map(|m| Some(Ok(Notice::decode(&m.payload))));
        let stats = self.client.statistics();
        let connects = stats.connects.load(Ordering::Relaxed);
        let reconnects = futures::stream::unfold((stats, connects), |(stats, seen)| async move {
            loop {
                tokio::time::sleep(RECONNECT_CHECK).await;
                let now = stats.connects.load(Ordering::Relaxed);
                if now != seen {
                    return Some((Some(Ok(Notice::Wake)), (stats, now)));
                }
            }
        });
        // `None` marks the end of the subscription, which ends the whole stream.
        let ended = futures::stream::once(async { None });
        let merged = futures::stream::select(notices.chain(ended), reconnects)
            .take_while(|n| futures::future::ready(n.is_some()))
            .filter_map(futures::future::ready);
        Ok(Box::pin(merged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse_to_ids_or_wake() {
        let (a, b) = (MessageId::new(), MessageId::new());
        assert_eq!(Notice::decode(format!("{a}\n{b}\n").as_bytes()), Notice::Committed(vec![a, b]));
        assert_eq!(Notice::decode(b""), Notice::Wake);
        assert_eq!(Notice::decode(b"not-an-id"), Notice::Wake);
        assert_eq!(Notice::decode(&[0xff, 0xfe]), Notice::Wake);
    }
}
