//! The listener: reads notices, coalesces them into batches and publishes at once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::batch::{Engine, Pipeline};
use crate::config::ListenerConfig;
use crate::message::MessageId;
use crate::metrics as m;
use crate::notify::{Notice, Notifier};

enum Job {
    Ids(Vec<Waiting>),
    Due,
}

/// An id the listener has not claimed yet, with how long and how often it has waited.
#[derive(Clone, Copy, Debug)]
struct Waiting {
    id: MessageId,
    since: Instant,
    tries: u8,
    /// The newest of the listener's other batches in flight when a claim of this id last
    /// failed: one of them may have held its key's head.
    behind: Option<u64>,
}

impl Waiting {
    fn new(id: MessageId, now: Instant) -> Self {
        Self { id, since: now, tries: 0, behind: None }
    }

    /// The id could not be claimed again. The failure counts as a try only when its key's
    /// head cannot be in one of this listener's batches: none is in flight, or every batch
    /// that was in flight at the last failure has finished since.
    fn failed_again(self, in_flight: &Batches) -> Self {
        let head_may_be_ours = match (in_flight.oldest(), self.behind) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(oldest), Some(behind)) => oldest <= behind,
        };
        Self { tries: self.tries.saturating_add(u8::from(!head_may_be_ours)), behind: in_flight.newest(), ..self }
    }
}

/// The listener's batch tasks, numbered in spawn order, so a deferred id can tell whether the
/// batches that were in flight when it last failed have all finished.
struct Batches {
    tasks: JoinSet<TaskOutcome>,
    /// The number of each batch in flight (at most `concurrency` of them).
    numbers: HashMap<tokio::task::Id, u64>,
    next: u64,
}

impl Batches {
    fn new() -> Self {
        Self { tasks: JoinSet::new(), numbers: HashMap::new(), next: 0 }
    }

    fn spawn(&mut self, task: impl std::future::Future<Output = TaskOutcome> + Send + 'static) {
        let id = self.tasks.spawn(task).id();
        self.numbers.insert(id, self.next);
        self.next += 1;
    }

    async fn join_next(&mut self) -> Option<Result<TaskOutcome, tokio::task::JoinError>> {
        let done = self.tasks.join_next_with_id().await?;
        let id = match &done {
            Ok((id, _)) => *id,
            Err(e) => e.id(),
        };
        self.numbers.remove(&id);
        Some(done.map(|(_, outcome)| outcome))
    }

    fn len(&self) -> usize {
        self.tasks.len()
    }
    fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
    fn oldest(&self) -> Option<u64> {
        self.numbers.values().min().copied()
    }
    fn newest(&self) -> Option<u64> {
        self.numbers.values().max().copied()
    }
}

/// What a batch task reports back to the listener.
#[derive(Debug, Default)]
struct TaskOutcome {
    /// It published something (which may unblock same-key successors elsewhere).
    progress: bool,
    /// Ids it could not claim that may become claimable (their key's head is in flight).
    leftover: Vec<Waiting>,
}

/// Retries in a row with no batch in flight and no progress before deferred ids are left to
/// the fallback (their key's head is dead, or another relay holds them).
const MAX_IDLE_RETRIES: u8 = 8;

/// Failed claims of one id before the listener leaves it to the fallback, counting only those
/// that prove its key's head is not in this listener's hands (see [`Waiting::failed_again`]):
/// a successor waits as long as its head's batch runs, however much else goes out meanwhile.
const MAX_TRIES: u8 = 4;

/// Ids that could not be claimed yet, retried whenever another batch makes progress: a message
/// whose same-key predecessor is in flight in another batch goes out right after it instead of
/// waiting for the fallback. Bounded in size, tries and age, so ids parked behind a dead head or
/// held by another relay cannot pile up; a forgotten id is still swept by the fallback.
#[derive(Debug)]
struct Deferred {
    waiting: Vec<Waiting>,
    ready: Vec<Waiting>,
    idle_retries: u8,
    capacity: usize,
    max_age: Duration,
}

impl Deferred {
    fn new(config: &ListenerConfig, max_age: Duration) -> Self {
        Self {
            waiting: Vec::new(),
            ready: Vec::new(),
            idle_retries: 0,
            capacity: config.max_batch.saturating_mul(config.concurrency).saturating_mul(4),
            max_age,
        }
    }

    fn task_done(&mut self, done: Option<Result<TaskOutcome, tokio::task::JoinError>>, in_flight: &Batches) {
        let nothing_in_flight = in_flight.is_empty();
        let outcome = match done {
            Some(Ok(outcome)) => outcome,
            Some(Err(e)) => {
                tracing::error!(error = %e, "outbox listener batch task failed; its messages are left to the fallback");
                return;
            }
            None => return,
        };
        let before = self.waiting.len() + outcome.leftover.len();
        let max_age = self.max_age;
        self.waiting.extend(
            outcome
                .leftover
                .into_iter()
                .map(|w| w.failed_again(in_flight))
                .filter(|w| w.tries <= MAX_TRIES && w.since.elapsed() < max_age),
        );
        let over = (self.waiting.len() + self.ready.len()).saturating_sub(self.capacity).min(self.waiting.len());
        self.waiting.drain(..over);
        let forgotten = before - self.waiting.len();
        if forgotten > 0 {
            metrics::counter!(m::DEFERRED_DROPPED).increment(forgotten as u64);
        }
        if outcome.progress {
            self.idle_retries = 0;
            self.ready.append(&mut self.waiting);
        } else if nothing_in_flight && !self.waiting.is_empty() {
            self.idle_retries += 1;
            if self.idle_retries > MAX_IDLE_RETRIES {
                metrics::counter!(m::DEFERRED_DROPPED).increment(self.waiting.len() as u64);
                self.waiting.clear();
                self.idle_retries = 0;
            } else {
                self.ready.append(&mut self.waiting);
            }
        }
    }

    fn take_ready(&mut self) -> Option<Vec<Waiting>> {
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

/// A subscription that lasted at least this long was healthy: the next one starts without delay.
const STABLE_SUBSCRIPTION: Duration = Duration::from_secs(5);
const MIN_RESUBSCRIBE_DELAY: Duration = Duration::from_millis(100);
const MAX_RESUBSCRIBE_DELAY: Duration = Duration::from_secs(10);

pub(crate) async fn run(
    pipeline: Arc<Pipeline>,
    notifier: Arc<dyn Notifier>,
    config: ListenerConfig,
    cancel: CancellationToken,
) {
    let mut tasks = Batches::new();
    let mut deferred = Deferred::new(&config, pipeline.claim_ttl);
    let mut resubscribe_delay = Duration::ZERO;
    // Each (re)subscription starts with a catch-up: notices sent while unsubscribed are lost.
    let mut catch_up = true;
    let mut subscribed_at: Option<Instant> = None;
    'subscribe: while !cancel.is_cancelled() {
        if subscribed_at.take().is_some_and(|at| at.elapsed() >= STABLE_SUBSCRIPTION) {
            resubscribe_delay = Duration::ZERO;
        }
        if !resubscribe_delay.is_zero() {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(resubscribe_delay) => {}
            }
        }
        // Until a subscription proves stable, each new one waits twice as long: a notifier
        // whose stream fails or ends at once must not spin the listener.
        resubscribe_delay = (resubscribe_delay * 2).clamp(MIN_RESUBSCRIBE_DELAY, MAX_RESUBSCRIBE_DELAY);
        let subscribed = tokio::select! {
            _ = cancel.cancelled() => break,
            sub = notifier.subscribe() => sub,
        };
        // Fused: a stream that ended must never be polled again (an `unfold` would panic).
        let mut notices = match subscribed {
            Ok(s) => s.fuse(),
            Err(e) => {
                pipeline.stats.error("subscribe", &e);
                continue;
            }
        };
        subscribed_at = Some(Instant::now());
        loop {
            let mut pending = Pending { wake: std::mem::take(&mut catch_up), ..Pending::default() };
            let retry = deferred.take_ready();
            if pending.is_empty() && retry.is_none() {
                tokio::select! {
                    _ = cancel.cancelled() => break 'subscribe,
                    done = tasks.join_next(), if !tasks.is_empty() => {
                        deferred.task_done(done, &tasks);
                        continue;
                    }
                    next = notices.next() => match read(&pipeline, next) {
                        Read::Notice(n) => pending.add(n),
                        Read::Lost => {
                            catch_up = true;
                            continue 'subscribe;
                        }
                    },
                }
            }
            // Linger: let a burst of commits share one claim and one publish.
            let deadline = (!config.linger.is_zero()).then(|| tokio::time::Instant::now() + config.linger);
            while pending.ids.len() < config.max_batch {
                let next = match deadline {
                    Some(at) => match tokio::time::timeout_at(at, notices.next()).await {
                        Ok(next) => next,
                        Err(_) => break,
                    },
                    // Take what is already queued without waiting.
                    None => match notices.next().now_or_never() {
                        Some(next) => next,
                        None => break,
                    },
                };
                match read(&pipeline, next) {
                    Read::Notice(n) => pending.add(n),
                    Read::Lost => {
                        catch_up = true;
                        break;
                    }
                }
            }
            let Pending { ids, wake } = pending;
            let now = Instant::now();
            let fresh: Vec<Waiting> = ids.into_iter().map(|id| Waiting::new(id, now)).collect();
            let mut jobs: Vec<Job> = fresh.chunks(config.max_batch).map(|c| Job::Ids(c.to_vec())).collect();
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
                            deferred.task_done(done, &tasks);
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

enum Read {
    Notice(Notice),
    /// The stream failed or ended: notices may have been missed.
    Lost,
}

fn read(pipeline: &Pipeline, next: Option<crate::Result<Notice>>) -> Read {
    match next {
        Some(Ok(n)) => Read::Notice(n),
        Some(Err(e)) => {
            pipeline.stats.error("notifier", &e);
            Read::Lost
        }
        None => Read::Lost,
    }
}

/// Claims the notified ids; keeps going while it makes progress, because completing a
/// message can make its same-key successor (often in the same notice) claimable. Ids it
/// cannot claim go back to the listener only while they are still pending.
async fn claim_ids_until_done(pipeline: &Pipeline, mut ids: Vec<Waiting>, cancel: &CancellationToken) -> TaskOutcome {
    let mut outcome = TaskOutcome::default();
    while !ids.is_empty() && !cancel.is_cancelled() {
        let lease = pipeline.lease();
        let wanted: Vec<MessageId> = ids.iter().map(|w| w.id).collect();
        let claimed = match pipeline.store.claim_ids(&wanted, &lease).await {
            Ok(c) => c,
            Err(e) => {
                // The fallback will sweep them; the listener only shortens latency.
                pipeline.stats.error("claim_ids", &e);
                return outcome;
            }
        };
        if claimed.is_empty() {
            outcome.leftover = still_retryable(pipeline, ids, &wanted).await;
            return outcome;
        }
        let done: HashSet<MessageId> = claimed.iter().map(|m| m.id).collect();
        pipeline.process(Engine::Listener, claimed, &lease).await;
        outcome.progress = true;
        ids.retain(|w| !done.contains(&w.id));
    }
    outcome
}

/// Those of `ids` still worth a claim by id: ids another relay published or holds (every
/// relay hears every id from a fan-out notifier) are forgotten at once.
async fn still_retryable(pipeline: &Pipeline, ids: Vec<Waiting>, wanted: &[MessageId]) -> Vec<Waiting> {
    let retryable: HashSet<MessageId> = match pipeline.store.retryable_among(wanted).await {
        Ok(p) => p.into_iter().collect(),
        Err(e) => {
            pipeline.stats.error("retryable_among", &e);
            return Vec::new();
        }
    };
    ids.into_iter().filter(|w| retryable.contains(&w.id)).collect()
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
