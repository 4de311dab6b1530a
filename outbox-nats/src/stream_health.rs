//! Subjects no stream takes: looked up once per batch, logged at most once a minute, and kept
//! for [`JetStreamBus::health`](crate::JetStreamBus::health) until a publish to them succeeds.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use tokio::sync::OnceCell;

/// The longest the missing-stream error stays unlogged while a stream is still missing.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Subjects shown in a log line or health message; the rest are counted.
const SHOWN: usize = 5;

/// The JetStream bus's health failure: the last publish to each of these subjects found no
/// stream that takes it (with [`require_stream`](crate::JetStreamConfig::require_stream) on).
/// Its messages are being retried; create the stream (e.g. with
/// [`ensure_stream`](crate::ensure_stream)) or fix the subject mapping.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no JetStream stream takes {}; its messages are retried until one does", describe(.subjects))]
#[non_exhaustive]
pub struct MissingStream {
    /// The subjects without a stream, sorted.
    pub subjects: Vec<String>,
}

fn describe(subjects: &[String]) -> String {
    format!("subject{} {}", if subjects.len() == 1 { "" } else { "s" }, shown(subjects))
}

fn shown<S: AsRef<str>>(subjects: &[S]) -> String {
    let mut text = subjects.iter().take(SHOWN).map(|s| format!("`{}`", s.as_ref())).collect::<Vec<_>>().join(", ");
    if subjects.len() > SHOWN {
        text.push_str(&format!(" and {} more", subjects.len() - SHOWN));
    }
    text
}

/// What a stream lookup for a subject found.
#[derive(Clone, Debug)]
pub(crate) enum Lookup {
    /// No stream takes the subject.
    Missing,
    /// This stream takes it.
    Found(String),
    /// JetStream did not answer the lookup.
    Failed(String),
}

/// One subject's lookup within a batch, and how many of the batch's messages needed it.
#[derive(Default)]
struct Entry {
    lookup: OnceCell<Lookup>,
    uses: AtomicUsize,
}

/// What one batch learnt about its subjects' streams. Each subject is looked up at most once,
/// however many of the batch's messages go to it, even when their acks come back together.
#[derive(Default)]
pub(crate) struct BatchStreams {
    entries: Mutex<HashMap<String, Arc<Entry>>>,
    delivered: Mutex<HashSet<String>>,
}

impl BatchStreams {
    /// The stream that takes `subject`, looked up on the first call for it in this batch.
    pub(crate) async fn lookup(&self, js: &jetstream::Context, subject: &str) -> Lookup {
        let entry = lock(&self.entries).entry(subject.to_owned()).or_default().clone();
        entry.uses.fetch_add(1, Ordering::Relaxed);
        entry
            .lookup
            .get_or_init(|| async {
                use async_nats::jetstream::context::GetStreamByNameErrorKind as Kind;
                match js.stream_by_subject(subject).await {
                    Ok(stream) => Lookup::Found(stream),
                    Err(e) if matches!(e.kind(), Kind::NotFound) => Lookup::Missing,
                    Err(e) => Lookup::Failed(e.to_string()),
                }
            })
            .await
            .clone()
    }

    /// Records that a message to `subject` was stored.
    pub(crate) fn delivered(&self, subject: &str) {
        lock(&self.delivered).insert(subject.to_owned());
    }
}

/// Subjects found without a stream, shared by every clone of a bus.
#[derive(Debug, Default)]
pub(crate) struct StreamHealth {
    missing: Mutex<Missing>,
    /// Whether `missing` has subjects: lets batches skip recording deliveries while all is well.
    any: AtomicBool,
}

#[derive(Debug, Default)]
struct Missing {
    subjects: HashSet<String>,
    logged: Option<Instant>,
}

impl StreamHealth {
    /// Whether some subject is missing its stream, so deliveries must be recorded to clear it.
    pub(crate) fn watching(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }

    /// The subjects without a stream, if any.
    pub(crate) fn check(&self) -> Result<(), MissingStream> {
        if !self.watching() {
            return Ok(());
        }
        let mut subjects: Vec<_> = lock(&self.missing).subjects.iter().cloned().collect();
        if subjects.is_empty() {
            return Ok(());
        }
        subjects.sort();
        Err(MissingStream { subjects })
    }

    /// Takes in what `batch` found. A subject delivered to or whose stream was found is
    /// cleared; one found missing is kept (when `require_stream`) and logged, at most once a
    /// minute for the whole bus.
    pub(crate) fn settle(&self, batch: BatchStreams, require_stream: bool) {
        let entries = batch.entries.into_inner().unwrap_or_else(PoisonError::into_inner);
        if entries.is_empty() && !self.watching() {
            return;
        }
        let delivered = batch.delivered.into_inner().unwrap_or_else(PoisonError::into_inner);
        let mut found: Vec<&str> = delivered.iter().map(String::as_str).collect();
        let mut missing = Vec::new();
        let mut messages = 0;
        for (subject, entry) in &entries {
            match entry.lookup.get() {
                Some(Lookup::Found(_)) => found.push(subject),
                Some(Lookup::Missing) if !delivered.contains(subject) => {
                    missing.push(subject.as_str());
                    messages += entry.uses.load(Ordering::Relaxed);
                }
                _ => {}
            }
        }
        if !require_stream {
            if !missing.is_empty() {
                tracing::debug!(subjects = %shown(&missing), "no JetStream stream yet; retrying (require_stream is off)");
            }
            return;
        }
        let mut state = lock(&self.missing);
        for subject in found {
            if state.subjects.remove(subject) {
                tracing::info!(subject, "a JetStream stream takes the subject again");
            }
        }
        state.subjects.extend(missing.iter().map(|s| (*s).to_owned()));
        let due = state.logged.is_none_or(|at| at.elapsed() >= LOG_EVERY);
        if !missing.is_empty() && due {
            state.logged = Some(Instant::now());
            missing.sort_unstable();
            tracing::error!(
                subjects = %shown(&missing),
                messages,
                missing_in_total = state.subjects.len(),
                "no JetStream stream takes these subjects: their messages are retried (and dead-lettered once \
                 max_attempts runs out) until one does; create the stream (outbox_nats::ensure_stream) or fix \
                 the subject mapping (logged at most once a minute)"
            );
        }
        self.any.store(!state.subjects.is_empty(), Ordering::Relaxed);
    }
}

/// A poisoned lock only means a publish panicked mid-update; the sets stay usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
