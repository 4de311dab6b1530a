//! Wiring: build a relay from a store, a bus and a notifier; spawn it; shut it down.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::batch::{Pipeline, RelayStats};
use super::{fallback, listener};
use crate::bus::Bus;
use crate::config::{FallbackConfig, ListenerConfig, RelayConfig, RetryPolicy};
use crate::error::{Error, Result};
use crate::notify::{NoopNotifier, Notifier};
use crate::store::OutboxStore;

/// A configured relay, ready to [`spawn`](Relay::spawn).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use outbox_core::{ChannelNotifier, MemoryBus, MemoryStore, NewMessage, Notifier, OutboxStore, Relay};
///
/// let store = Arc::new(MemoryStore::new());
/// let bus = Arc::new(MemoryBus::new());
/// let notifier = Arc::new(ChannelNotifier::new(1024));
/// let relay = Relay::builder(store.clone(), bus.clone())
///     .notifier(notifier.clone())
///     .build()
///     .unwrap()
///     .spawn();
///
/// let ids = store.enqueue(vec![NewMessage::new("greetings", "hello")]).await.unwrap();
/// notifier.notify(&ids).await;
/// bus.wait_for(1, Duration::from_secs(5)).await.unwrap();
/// relay.shutdown().await.unwrap();
/// # });
/// ```
#[derive(Debug)]
pub struct Relay {
    store: Arc<dyn OutboxStore>,
    bus: Arc<dyn Bus>,
    notifier: Arc<dyn Notifier>,
    config: RelayConfig,
}

impl Relay {
    /// Starts building a relay over `store` and `bus`.
    pub fn builder(store: Arc<dyn OutboxStore>, bus: Arc<dyn Bus>) -> RelayBuilder {
        RelayBuilder { store, bus, notifier: Arc::new(NoopNotifier), config: RelayConfig::default() }
    }

    /// The validated configuration.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// Starts the engines on the current tokio runtime.
    ///
    /// Keep the handle: dropping it does not stop the engines (they run until the runtime
    /// shuts down), but then nothing can shut them down gracefully or see their health.
    #[must_use = "a relay is stopped gracefully and checked through its handle; call `shutdown` on it"]
    pub fn spawn(self) -> RelayHandle {
        let cancel = CancellationToken::new();
        let stats = Arc::new(RelayStats::default());
        self.store.relay_started();
        let store = self.store.clone();
        let pipeline = Arc::new(Pipeline {
            store: self.store,
            bus: self.bus,
            retry: self.config.retry.clone(),
            claim_ttl: self.config.claim_ttl,
            stats: stats.clone(),
        });
        let sweep_now = Arc::new(Notify::new());
        let health = Arc::new(EngineHealth::default());
        let mut engines = JoinSet::new();
        if let Some(cfg) = self.config.listener.clone() {
            let run = listener::run(pipeline.clone(), self.notifier, cfg, cancel.clone());
            engines.spawn(supervise("listener", run, health.clone(), cancel.clone()));
        }
        if let Some(cfg) = self.config.fallback.clone() {
            let run = fallback::run(pipeline, cfg, sweep_now.clone(), cancel.clone());
            engines.spawn(supervise("fallback", run, health.clone(), cancel.clone()));
        }
        tracing::info!(
            listener = self.config.listener.is_some(),
            fallback = self.config.fallback.is_some(),
            "outbox relay started"
        );
        RelayHandle { cancel, engines, stats, health, sweep_now, shutdown_timeout: self.config.shutdown_timeout, store }
    }
}

/// Engines that stopped on their own, for [`RelayHandle::health`].
#[derive(Debug, Default)]
struct EngineHealth {
    stopped: Mutex<Vec<(&'static str, String)>>,
}

impl EngineHealth {
    fn first_stopped(&self) -> Result<()> {
        let stopped = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        match stopped.first() {
            Some((engine, reason)) => Err(Error::EngineStopped { engine, reason: reason.clone() }),
            None => Ok(()),
        }
    }
}

/// Runs an engine, recording in `health` if it stops before shutdown (it panicked, or
/// returned early), so the relay's handle can report it instead of going quiet.
async fn supervise(
    engine: &'static str,
    run: impl Future<Output = ()>,
    health: Arc<EngineHealth>,
    cancel: CancellationToken,
) {
    let reason = match AssertUnwindSafe(run).catch_unwind().await {
        Err(panic) => format!("panicked: {}", super::batch::panic_reason(panic.as_ref())),
        Ok(()) if !cancel.is_cancelled() => "returned before shutdown".to_owned(),
        Ok(()) => return,
    };
    tracing::error!(engine, %reason, "outbox relay engine stopped");
    health.stopped.lock().unwrap_or_else(|e| e.into_inner()).push((engine, reason));
}

/// Chained settings for a [`Relay`]; [`build`](RelayBuilder::build) validates them.
#[derive(Debug)]
#[must_use]
pub struct RelayBuilder {
    store: Arc<dyn OutboxStore>,
    bus: Arc<dyn Bus>,
    notifier: Arc<dyn Notifier>,
    config: RelayConfig,
}

impl RelayBuilder {
    /// Where the listener gets its wake-ups. Default: none (fallback only).
    pub fn notifier(mut self, notifier: Arc<dyn Notifier>) -> Self {
        self.notifier = notifier;
        self
    }
    /// Listener settings.
    pub fn listener(mut self, config: ListenerConfig) -> Self {
        self.config.listener = Some(config);
        self
    }
    /// Switches the listener off.
    pub fn without_listener(mut self) -> Self {
        self.config.listener = None;
        self
    }
    /// Fallback settings.
    pub fn fallback(mut self, config: FallbackConfig) -> Self {
        self.config.fallback = Some(config);
        self
    }
    /// Switches the fallback off. Then nothing sweeps what the listener misses: messages whose
    /// notice was dropped, that failed and wait for their retry, or that the listener stopped
    /// retrying wait until the next start's catch-up. For tests, and for relays beside another
    /// that runs the fallback.
    pub fn without_fallback(mut self) -> Self {
        self.config.fallback = None;
        self
    }
    /// Failure handling.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.config.retry = policy;
        self
    }
    /// How long a claim holds before another relay may take it over.
    pub fn claim_ttl(mut self, ttl: Duration) -> Self {
        self.config.claim_ttl = ttl;
        self
    }
    /// How long shutdown waits for in-flight batches.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.config.shutdown_timeout = timeout;
        self
    }
    /// Replaces the whole configuration.
    pub fn config(mut self, config: RelayConfig) -> Self {
        self.config = config;
        self
    }

    /// Validates the configuration; the error names the first bad field.
    pub fn build(self) -> Result<Relay> {
        self.config.validate()?;
        Ok(Relay { store: self.store, bus: self.bus, notifier: self.notifier, config: self.config })
    }
}

/// Whether a relay's engines still run; see [`RelayHandle::health_probe`].
#[derive(Clone, Debug)]
pub struct RelayHealth(Arc<EngineHealth>);

impl RelayHealth {
    /// Same as [`RelayHandle::health`].
    pub fn check(&self) -> Result<()> {
        self.0.first_stopped()
    }
}

/// A running relay.
///
/// Dropping it does not stop the engines: they keep running, unstoppable, until the runtime
/// shuts down, and in-flight batches are then cut off (their claims expire and are swept).
/// Call [`shutdown`](RelayHandle::shutdown) instead.
#[derive(Debug)]
#[must_use = "dropping a RelayHandle leaves the relay running with no way to stop it gracefully"]
pub struct RelayHandle {
    cancel: CancellationToken,
    engines: JoinSet<()>,
    stats: Arc<RelayStats>,
    health: Arc<EngineHealth>,
    sweep_now: Arc<Notify>,
    shutdown_timeout: Duration,
    /// Told when the relay stops ([`OutboxStore::relay_stopped`]).
    store: Arc<dyn OutboxStore>,
}

impl RelayHandle {
    /// Running totals.
    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }

    /// `Ok` while every engine that was started still runs; otherwise
    /// [`Error::EngineStopped`] naming the first that stopped and why. Serve it from a
    /// health endpoint: a relay whose listener died still sweeps, but slowly.
    pub fn health(&self) -> Result<()> {
        self.health.first_stopped()
    }

    /// A cheap, cloneable view of [`health`](RelayHandle::health) for a health endpoint that
    /// outlives borrows of the handle (which [`shutdown`](RelayHandle::shutdown) consumes).
    pub fn health_probe(&self) -> RelayHealth {
        RelayHealth(self.health.clone())
    }

    /// Asks the fallback to sweep now instead of at its next tick.
    pub fn sweep_now(&self) {
        self.sweep_now.notify_one();
    }

    /// A token that is cancelled when shutdown starts.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Stops claiming, lets in-flight batches finish within the shutdown timeout, then
    /// returns. Nothing is claimed after it returns. If the deadline passes, remaining work
    /// is aborted (its claims expire and are swept later) and `ShutdownTimeout` is returned;
    /// if an engine had stopped on its own, `EngineStopped` is.
    pub async fn shutdown(mut self) -> Result<()> {
        self.cancel.cancel();
        let drained =
            tokio::time::timeout(self.shutdown_timeout, async { while self.engines.join_next().await.is_some() {} })
                .await;
        if drained.is_err() {
            self.engines.shutdown().await;
            self.store.relay_stopped().await;
            return Err(Error::ShutdownTimeout(self.shutdown_timeout));
        }
        self.store.relay_stopped().await;
        self.health.first_stopped()?;
        tracing::info!("outbox relay stopped");
        Ok(())
    }
}
