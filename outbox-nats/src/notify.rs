//! A cross-process notifier on a core-NATS subject.

use std::time::Duration;

use async_nats::connection::State;
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use outbox_core::{Error, MessageId, Notice, NoticeStream, Notifier, Result};

/// Counter: notices this notifier failed to send.
pub const NOTIFY_ERRORS: &str = "outbox_nats_notify_errors_total";

/// Wakes relays in other processes: `notify` publishes the committed ids (one message per
/// transaction) on a subject; `subscribe` turns them into [`Notice::Committed`].
///
/// Core NATS does not keep messages, so notices sent while a relay is disconnected are lost:
/// after a reconnect the stream yields [`Notice::Wake`] and the relay sweeps.
#[derive(Clone, Debug)]
pub struct NatsNotifier {
    client: async_nats::Client,
    subject: String,
}

impl NatsNotifier {
    /// A notifier on `subject` (e.g. `outbox.notify`).
    pub fn new(client: async_nats::Client, subject: impl Into<String>) -> Result<Self> {
        let subject = subject.into();
        if let Some(reason) = crate::config::invalid_subject(&subject) {
            return Err(Error::config("nats.notify_subject", reason));
        }
        Ok(Self { client, subject })
    }
}

fn parse_ids(payload: &[u8]) -> Notice {
    let ids: Option<Vec<MessageId>> = std::str::from_utf8(payload)
        .ok()
        .map(|s| s.split('\n').filter(|l| !l.is_empty()).map(|l| l.parse().ok()).collect::<Option<Vec<_>>>())
        .unwrap_or(None);
    match ids {
        Some(ids) if !ids.is_empty() => Notice::Committed(ids),
        _ => Notice::Wake,
    }
}

#[async_trait]
impl Notifier for NatsNotifier {
    async fn notify(&self, ids: &[MessageId]) {
        if ids.is_empty() {
            return;
        }
        let payload: String = ids.iter().map(|id| format!("{id}\n")).collect();
        if let Err(e) = self.client.publish(self.subject.clone(), Bytes::from(payload)).await {
            metrics::counter!(NOTIFY_ERRORS).increment(1);
            tracing::warn!(error = %e, subject = %self.subject, "NATS notice not sent; the fallback will publish");
        }
    }

    async fn subscribe(&self) -> Result<NoticeStream> {
        let sub = self.client.subscribe(self.subject.clone()).await.map_err(|e| {
            Error::temporary("nats", format!("cannot subscribe to `{}`: {e}", self.subject), Some(Box::new(e) as _))
        })?;
        // Make sure the server knows the subscription before we report being subscribed.
        let _ = self.client.flush().await;
        let notices = sub.map(|m| Ok(parse_ids(&m.payload)));
        // Notices sent while disconnected are gone: a reconnect triggers a sweep.
        let client = self.client.clone();
        let reconnects = futures::stream::unfold((client, true), |(client, mut was_up)| async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let up = client.connection_state() == State::Connected;
                let reconnected = up && !was_up;
                was_up = up;
                if reconnected {
                    return Some((Ok(Notice::Wake), (client, was_up)));
                }
            }
        });
        Ok(Box::pin(futures::stream::select(notices, reconnects)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse_to_ids_or_wake() {
        let (a, b) = (MessageId::new(), MessageId::new());
        assert_eq!(parse_ids(format!("{a}\n{b}\n").as_bytes()), Notice::Committed(vec![a, b]));
        assert_eq!(parse_ids(b""), Notice::Wake);
        assert_eq!(parse_ids(b"not-an-id"), Notice::Wake);
    }
}
