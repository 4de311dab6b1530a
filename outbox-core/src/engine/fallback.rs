//! The fallback: on a jittered interval, sweeps batch after batch until nothing is due.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::batch::{Engine, Pipeline};
use crate::config::FallbackConfig;
use crate::metrics as m;

pub(crate) async fn run(
    pipeline: Arc<Pipeline>,
    config: FallbackConfig,
    sweep_now: Arc<Notify>,
    cancel: CancellationToken,
) {
    let mut gauges_due = tokio::time::Instant::now();
    // The first sweep runs at once: it picks up whatever a previous run left behind.
    loop {
        sweep(&pipeline, &config, &cancel).await;
        if tokio::time::Instant::now() >= gauges_due {
            report_gauges(&pipeline).await;
            gauges_due = tokio::time::Instant::now() + config.stats_interval;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(jittered(config.interval)) => {}
            _ = sweep_now.notified() => {}
        }
    }
}

/// Runs `concurrency` workers, each claiming and publishing until nothing is due.
async fn sweep(pipeline: &Arc<Pipeline>, config: &FallbackConfig, cancel: &CancellationToken) {
    let mut workers = JoinSet::new();
    for _ in 0..config.concurrency {
        let (p, c, cfg) = (pipeline.clone(), cancel.clone(), config.clone());
        workers.spawn(async move {
            while !c.is_cancelled() {
                let lease = p.lease();
                match p.store.claim_due(cfg.batch_size, cfg.min_age, &lease).await {
                    Ok(batch) if batch.is_empty() => return,
                    Ok(batch) => p.process(Engine::Fallback, batch, &lease).await,
                    Err(e) => {
                        // Database down: wait for the next interval rather than spin.
                        p.stats.error("claim_due", &e);
                        return;
                    }
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
}

async fn report_gauges(pipeline: &Pipeline) {
    match pipeline.store.stats().await {
        Ok(s) => {
            metrics::gauge!(m::PENDING).set(s.pending as f64);
            metrics::gauge!(m::DEAD).set(s.dead as f64);
            let age = s.oldest_pending_age.unwrap_or_default().as_secs_f64();
            metrics::gauge!(m::OLDEST_PENDING_AGE).set(age);
        }
        Err(e) => pipeline.stats.error("stats", &e),
    }
}

/// ±10 % so relays started together do not sweep in lockstep.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.9 + fastrand::f64() * 0.2)
}
