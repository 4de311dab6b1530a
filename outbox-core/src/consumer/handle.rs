//! The handle of a running consumer, shared by the runners.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{ConsumerCounters, ConsumerStats};
use crate::error::{Error, Result};

/// Tells a runner's loop that [`ConsumerHandle::shutdown`] was called (or the handle dropped).
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Whether the runner should stop.
    pub fn is_requested(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }

    /// Waits until the runner should stop.
    pub async fn requested(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// A running consumer: its counts, a graceful [`shutdown`](Self::shutdown) and a hard
/// [`abort`](Self::abort). Dropping it stops the consumer as `shutdown` does, without waiting.
///
/// ```
/// use outbox_core::consumer::ConsumerHandle;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let handle = ConsumerHandle::spawn("memory", |mut shutdown, _counters| async move { shutdown.requested().await });
/// assert_eq!(handle.stats().processed, 0);
/// handle.shutdown().await.unwrap();
/// # });
/// ```
#[derive(Debug)]
pub struct ConsumerHandle {
    backend: &'static str,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    counters: Arc<ConsumerCounters>,
}

impl ConsumerHandle {
    /// Spawns `run`, the runner's loop, with its shutdown signal and counters.
    pub fn spawn<F, Fut>(backend: &'static str, run: F) -> Self
    where
        F: FnOnce(Shutdown, Arc<ConsumerCounters>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = watch::channel(false);
        let counters = Arc::new(ConsumerCounters::default());
        let task = tokio::spawn(run(Shutdown(stopped), counters.clone()));
        Self { backend, stop, task, counters }
    }

    /// Counts since it started.
    pub fn stats(&self) -> ConsumerStats {
        self.counters.snapshot()
    }

    /// Stops fetching, lets the handlers in flight finish and acknowledge, then returns.
    /// Messages fetched but not started are left to the broker's redelivery.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.stop.send(true);
        self.task.await.map_err(|e| Error::permanent(self.backend, format!("consumer task failed: {e}"), None))
    }

    /// Stops at once, like a killed process: handlers in flight are dropped unacknowledged
    /// and their messages come back after `ack_wait`.
    pub fn abort(self) {
        self.task.abort();
    }
}
