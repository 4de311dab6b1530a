//! The listener: reads notices, coalesces them into batches and publishes at once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::batch::{Engine, Pipeline};
use crate::config::ListenerConfig;
use crate::message::MessageId;
use crate::notify::{Notice, NoticeStream, Notifier};

enum Job {
    Ids(Vec<MessageId>),
    Due,
}

/// What a batch task reports back to the listener.
#[derive(Debug, Default)]
struct TaskOutcome {
    /// It published something (which may unblock same-key successors elsewhere).
    progress: bool,
    /// Ids it could not claim (their key's head was in flight, or another relay has them).
    leftover: Vec<MessageId>,
}

/// Retries in a row with no batch in flight and no progress before deferred ids are left to
/// the fallback (their key's head is dead, or another relay holds them).
const MAX_IDLE_RETRIES: u8 = 8;

/// Ids that could not be claimed yet, retried whenever another batch makes progress: a message
/// whose same-key predecessor is in flight in another batch goes out right after it instead of
/// waiting for the fallback.
#[derive(Debug, Default)]
struct Deferred {
    waiting: Vec<MessageId>,
    ready: Vec<MessageId>,
    idle_retries: u8,
}

impl Deferred {
    fn task_done(&mut self, done: Option<Result<TaskOutcome, tokio::task::JoinError>>, nothing_in_flight: bool) {
        let Some(Ok(outcome)) = done else { return };
        self.waiting.extend(outcome.leftover);
        if outcome.progress {
            self.idle_retries = 0;
            self.ready.append(&mut self.waiting);
        } else if nothing_in_flight && !self.waiting.is_empty() {
            self.idle_retries += 1;
            if self.idle_retries > MAX_IDLE_RETRIES {
                self.waiting.clear();
                self.idle_retries = 0;
            } else {
                self.ready.append(&mut self.waiting);
            }
        }
    }

    fn take_ready(&mut self) -> Option<Vec<MessageId>> {
        (!self.ready.is_empty()).then(|| std::mem::take(&mut self.ready))
    }
}

/// Work gathered from one or more notices.
#[derive(Debug, Default)]
struct Pending {
    ids: Vec<MessageId>,
    wake: bool,
}

impl Pending {
    fn add(&mut self, notice: Notice) {
        match notice {
            Notice::Committed(ids) => self.ids.extend(ids),
            Notice::Wake => self.wake = true,
        }
    }
    fn is_empty(&self) -> bool {
        self.ids.is_empty() && !self.wake
    }
}

pub(crate) async fn run(
    pipeline: Arc<Pipeline>,
    notifier: Arc<dyn Notifier>,
    config: ListenerConfig,
    cancel: CancellationToken,
) {
    let mut tasks: JoinSet<TaskOutcome> = JoinSet::new();
    let mut deferred = Deferred::default();
    let mut reconnect_delay = Duration::from_millis(100);
    // Each (re)subscription starts with a catch-up: notices sent while unsubscribed are lost.
    let mut catch_up = true;
    'subscribe: while !cancel.is_cancelled() {
        let mut notices: NoticeStream = tokio::select! {
            _ = cancel.cancelled() => break,
            sub = notifier.subscribe() => match sub {
                Ok(s) => s,
                Err(e) => {
                    pipeline.stats.error("subscribe", &e);
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(reconnect_delay) => {}
                    }
                    reconnect_delay = (reconnect_delay * 2).min(Duration::from_secs(10));
                    continue;
                }
            },
        };
        reconnect_delay = Duration::from_millis(100);
        loop {
            let mut pending = Pending { wake: std::mem::take(&mut catch_up), ..Pending::default() };
            let retry = deferred.take_ready();
            if pending.is_empty() && retry.is_none() {
                tokio::select! {
                    _ = cancel.cancelled() => break 'subscribe,
                    done = tasks.join_next(), if !tasks.is_empty() => {
                        let idle = tasks.is_empty();
                        deferred.task_done(done, idle);
                        continue;
                    }
                    next = notices.next() => match next {
                        Some(Ok(n)) => pending.add(n),
                        Some(Err(e)) => {
                            pipeline.stats.error("notifier", &e);
                            catch_up = true;
                            continue 'subscribe;
                        }
                        None => {
                            catch_up = true;
                            continue 'subscribe;
                        }
                    },
                }
            }
            // Linger: let a burst of commits share one claim and one publish.
            if !config.linger.is_zero() && pending.ids.len() < config.max_batch {
                let deadline = tokio::time::Instant::now() + config.linger;
                while pending.ids.len() < config.max_batch {
                    match tokio::time::timeout_at(deadline, notices.next()).await {
                        Ok(Some(Ok(n))) => pending.add(n),
                        Ok(Some(Err(_)) | None) => {
                            catch_up = true;
                            break;
                        }
                        Err(_) => break,
                    }
                }
            } else {
                // Take what is already queued without waiting.
                while pending.ids.len() < config.max_batch {
                    match notices.next().now_or_never_ok() {
                        Some(n) => pending.add(n),
                        None => break,
                    }
                }
            }
            let Pending { ids, wake } = pending;
            let mut jobs: Vec<Job> = ids.chunks(config.max_batch).map(|c| Job::Ids(c.to_vec())).collect();
            if let Some(ids) = retry {
                jobs.extend(ids.chunks(config.max_batch).map(|c| Job::Ids(c.to_vec())));
            }
            if wake {
                jobs.push(Job::Due);
            }
            for job in jobs {
                // Bound batches in flight; meanwhile notices queue in the channel (and are
                // dropped and counted when it is full, which the fallback makes harmless).
                while tasks.len() >= config.concurrency {
                    tokio::select! {
                        _ = cancel.cancelled() => break 'subscribe,
                        done = tasks.join_next() => {
                            let idle = tasks.is_empty();
                            deferred.task_done(done, idle);
                        }
                    }
                }
                let (p, c, max) = (pipeline.clone(), cancel.clone(), config.max_batch);
                tasks.spawn(async move {
                    match job {
                        Job::Ids(ids) => claim_ids_until_done(&p, ids, &c).await,
                        Job::Due => drain_due(&p, max, &c).await,
                    }
                });
            }
            if catch_up {
                continue 'subscribe;
            }
        }
    }
    // In-flight batches finish; they check `cancel` before claiming more.
    while tasks.join_next().await.is_some() {}
}

/// Claims the notified ids; keeps going while it makes progress, because completing a
/// message can make its same-key successor (often in the same notice) claimable.
async fn claim_ids_until_done(pipeline: &Pipeline, mut ids: Vec<MessageId>, cancel: &CancellationToken) -> TaskOutcome {
    let mut outcome = TaskOutcome::default();
    while !ids.is_empty() && !cancel.is_cancelled() {
        let lease = pipeline.lease();
        let claimed = match pipeline.store.claim_ids(&ids, &lease).await {
            Ok(c) => c,
            Err(e) => {
                // The fallback will sweep them; the listener only shortens latency.
                pipeline.stats.error("claim_ids", &e);
                return outcome;
            }
        };
        if claimed.is_empty() {
            outcome.leftover = ids;
            return outcome;
        }
        let done: HashSet<MessageId> = claimed.iter().map(|m| m.id).collect();
        pipeline.process(Engine::Listener, claimed, &lease).await;
        outcome.progress = true;
        ids.retain(|id| !done.contains(id));
    }
    outcome
}

/// Claims whatever is due (no minimum age) until nothing is left: the response to a
/// [`Notice::Wake`] from a cross-process notifier or after a reconnect.
async fn drain_due(pipeline: &Pipeline, max_batch: usize, cancel: &CancellationToken) -> TaskOutcome {
    let mut outcome = TaskOutcome::default();
    while !cancel.is_cancelled() {
        let lease = pipeline.lease();
        match pipeline.store.claim_due(max_batch, Duration::ZERO, &lease).await {
            Ok(batch) if batch.is_empty() => break,
            Ok(batch) => {
                pipeline.process(Engine::Listener, batch, &lease).await;
                outcome.progress = true;
            }
            Err(e) => {
                pipeline.stats.error("claim_due", &e);
                break;
            }
        }
    }
    outcome
}

/// Polls a stream once without waiting; `None` if nothing is ready or it errored.
trait NowOrNever {
    fn now_or_never_ok(self) -> Option<Notice>;
}

impl<F: std::future::Future<Output = Option<crate::Result<Notice>>>> NowOrNever for F {
    fn now_or_never_ok(self) -> Option<Notice> {
        futures::FutureExt::now_or_never(self).flatten().and_then(Result::ok)
    }
}
