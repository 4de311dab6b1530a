//! Wake-ups from the write side to the relay's listener.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use futures::stream::BoxStream;
use std::sync::Mutex;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::message::MessageId;

/// A wake-up delivered to the listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// These messages were committed: claim them by id.
    Committed(Vec<MessageId>),
    /// Something was committed, or notices may have been lost (reconnect): claim whatever is due.
    Wake,
}

impl Notice {
    /// The wire form cross-process notifiers send: one id per line.
    pub fn encode_ids(ids: &[MessageId]) -> String {
        ids.iter().map(|id| format!("{id}\n")).collect()
    }

    /// Reads [`Notice::encode_ids`]'s form; anything else (empty, foreign) is a [`Notice::Wake`].
    ///
    /// ```
    /// use outbox_core::{MessageId, Notice};
    /// let id = MessageId::new();
    /// assert_eq!(Notice::decode(Notice::encode_ids(&[id]).as_bytes()), Notice::Committed(vec![id]));
    /// assert_eq!(Notice::decode(b"not an id"), Notice::Wake);
    /// ```
    pub fn decode(payload: &[u8]) -> Self {
        let ids: Option<Vec<MessageId>> = std::str::from_utf8(payload)
            .ok()
            .and_then(|s| s.split('\n').filter(|l| !l.is_empty()).map(|l| l.parse().ok()).collect());
        match ids {
            Some(ids) if !ids.is_empty() => Self::Committed(ids),
            _ => Self::Wake,
        }
    }
}

/// The stream of notices a relay listens to. It ends, or yields an error, when the source
/// disconnects; the listener then resubscribes and sweeps, so nothing waits for the fallback.
pub type NoticeStream = BoxStream<'static, Result<Notice>>;

/// Carries "messages committed" from writers to relays.
///
/// `notify` is called after commit and must never block or fail the writer: a lost notice only
/// costs latency, because the fallback sweep publishes every committed message anyway.
#[async_trait]
pub trait Notifier: Send + Sync + Debug + 'static {
    /// Announces committed messages (one call per transaction).
    async fn notify(&self, ids: &[MessageId]);

    /// Opens a stream of notices for one listener.
    async fn subscribe(&self) -> Result<NoticeStream>;
}

/// In-process notifier over a bounded tokio channel (the default).
///
/// On a full channel the notice is dropped and counted
/// (`outbox_notices_dropped_total`); the writer is never slowed.
///
/// ```
/// # tokio_test_block_on(async {
/// use futures::StreamExt;
/// use outbox_core::{ChannelNotifier, MessageId, Notice, Notifier};
///
/// let notifier = ChannelNotifier::new(1);
/// let mut notices = notifier.subscribe().await.unwrap();
/// let id = MessageId::new();
/// notifier.notify(&[id]).await;
/// notifier.notify(&[MessageId::new()]).await; // channel full: dropped, not blocked
/// assert_eq!(notifier.dropped(), 1);
/// assert_eq!(notices.next().await.unwrap().unwrap(), Notice::Committed(vec![id]));
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ChannelNotifier {
    inner: Arc<ChannelInner>,
}

#[derive(Debug)]
struct ChannelInner {
    tx: mpsc::Sender<Notice>,
    rx: Mutex<Option<mpsc::Receiver<Notice>>>,
    dropped: AtomicU64,
}

impl ChannelNotifier {
    /// A channel holding at most `capacity` notices (each notice covers one transaction).
    ///
    /// # Panics
    /// If `capacity` is 0 (tokio channels need room for one).
    pub fn new(capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity);
        Self { inner: Arc::new(ChannelInner { tx, rx: Mutex::new(Some(rx)), dropped: AtomicU64::new(0) }) }
    }

    /// Validated constructor: a zero capacity is a configuration error.
    pub fn with_capacity(capacity: usize) -> Result<Self> {
        if capacity == 0 {
            return Err(Error::config("notifier.capacity", "must be at least 1"));
        }
        Ok(Self::new(capacity))
    }

    /// Notices dropped so far because the channel was full or had no listener.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Sends without awaiting; usable from sync code.
    pub fn notify_now(&self, ids: &[MessageId]) {
        if ids.is_empty() {
            return;
        }
        if self.inner.tx.try_send(Notice::Committed(ids.to_vec())).is_err() {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(crate::metrics::NOTICES_DROPPED).increment(1);
        }
    }
}

impl Default for ChannelNotifier {
    fn default() -> Self {
        Self::new(1024)
    }
}

#[async_trait]
impl Notifier for ChannelNotifier {
    async fn notify(&self, ids: &[MessageId]) {
        self.notify_now(ids);
    }

    /// The channel has one receiver: one listener at a time holds it, and gets it back
    /// when its stream is dropped (so a relay can be stopped and started again).
    async fn subscribe(&self) -> Result<NoticeStream> {
        let rx = self.inner.rx.lock().unwrap_or_else(|e| e.into_inner()).take().ok_or_else(|| {
            Error::permanent(
                "channel-notifier",
                "already subscribed: an in-process channel feeds one listener at a time",
                None,
            )
        })?;
        Ok(Box::pin(ChannelStream { rx: Some(rx), inner: self.inner.clone() }))
    }
}

/// Hands the receiver back to the notifier when the listener lets go.
struct ChannelStream {
    rx: Option<mpsc::Receiver<Notice>>,
    inner: Arc<ChannelInner>,
}

impl futures::Stream for ChannelStream {
    type Item = Result<Notice>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        match self.rx.as_mut() {
            Some(rx) => rx.poll_recv(cx).map(|n| n.map(Ok)),
            None => std::task::Poll::Ready(None),
        }
    }
}

impl Drop for ChannelStream {
    fn drop(&mut self) {
        if let Some(rx) = self.rx.take() {
            let mut slot = self.inner.rx.lock().unwrap_or_else(|e| e.into_inner());
            *slot = Some(rx);
        }
    }
}

/// A notifier that never wakes anyone: the relay relies on the fallback sweep alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopNotifier;

#[async_trait]
impl Notifier for NoopNotifier {
    async fn notify(&self, _ids: &[MessageId]) {}
    async fn subscribe(&self) -> Result<NoticeStream> {
        Ok(Box::pin(futures::stream::pending()))
    }
}
