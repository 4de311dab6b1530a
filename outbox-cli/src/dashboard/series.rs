//! The live chart's data: one sample a second, the last [`KEEP`] seconds.
//!
//! Served by `outbox relay`, published per second is the relay's own counter
//! ([`RelayStats::published`]). Standalone, the dashboard publishes nothing, so it counts the
//! published rows the table keeps (`--retention keep`) by their `finished_at`; with the
//! default retention those rows are deleted and only the pending trend tells the story.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox::RelayStats;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use serde::Serialize;

/// Samples kept (one a second).
pub(crate) const KEEP: usize = 300;

/// Where "published per second" comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Source {
    /// The relay serving the dashboard: its published counter.
    Relay,
    /// Published rows the table keeps, by their `finished_at`.
    Database,
}

impl Source {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Self::Relay => {
                "Published per second: messages this relay's broker acknowledged, from the relay's own \
                 counter sampled every second. Pending: the outbox's pending count, sampled every second."
            }
            Self::Database => {
                "Published per second: published rows the table keeps (relays run with --retention keep), \
                 counted by the time they were published; with the default retention (delete) published \
                 rows are gone and this line stays at 0. Pending: the outbox's pending count, sampled every \
                 second: a falling line is the relays draining it."
            }
        }
    }
}

/// One second.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Point {
    /// Unix ms.
    pub(crate) t: i64,
    /// Published in the second before `t`, if known.
    pub(crate) published: Option<u64>,
    /// Pending at `t`, if the database answered.
    pub(crate) pending: Option<u64>,
}

/// The samples, shared by the sampler and the handlers.
#[derive(Debug)]
pub(crate) struct Series {
    pub(crate) source: Source,
    points: Mutex<VecDeque<Point>>,
}

impl Series {
    pub(crate) fn new(source: Source) -> Arc<Self> {
        Arc::new(Self { source, points: Mutex::new(VecDeque::with_capacity(KEEP)) })
    }

    pub(crate) fn points(&self) -> Vec<Point> {
        self.points.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().collect()
    }

    fn push(&self, point: Point) {
        let mut points = self.points.lock().unwrap_or_else(|e| e.into_inner());
        if points.len() == KEEP {
            points.pop_front();
        }
        points.push_back(point);
    }
}

/// Counts published rows of a SQL outbox table in a time window.
#[derive(Debug, Clone)]
pub(crate) struct PublishedRows {
    pub(crate) db: DatabaseConnection,
    pub(crate) table: String,
}

impl PublishedRows {
    async fn between(&self, from: i64, to: i64) -> Option<u64> {
        let backend = self.db.get_database_backend();
        let table = match backend {
            DbBackend::MySql => format!("`{}`", self.table),
            _ => format!("\"{}\"", self.table),
        };
        // The bounds are integers this process computed; the table name is validated by the store.
        let sql = format!(
            "SELECT COUNT(*) AS n FROM {table} WHERE status = {} AND finished_at >= {from} AND finished_at < {to}",
            outbox::sea_orm::schema::status::PUBLISHED
        );
        let row = self.db.query_one_raw(Statement::from_string(backend, sql)).await.ok()??;
        row.try_get::<i64>("", "n").ok().map(|n| n.max(0) as u64)
    }
}

/// Samples once a second until dropped. `relay` is the serving relay's counter, if any.
pub(crate) async fn sample(
    series: Arc<Series>,
    store: super::Store,
    relay: Option<&RelayStats>,
    rows: Option<PublishedRows>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_count = relay.map(RelayStats::published);
    let mut last_t = outbox::message::now_millis();
    tick.tick().await;
    loop {
        tick.tick().await;
        let t = outbox::message::now_millis();
        let published = match (relay, &rows) {
            (Some(stats), _) => {
                let now = stats.published();
                let delta = last_count.map(|c| now.saturating_sub(c));
                last_count = Some(now);
                delta
            }
            (None, Some(rows)) => rows.between(last_t, t).await,
            (None, None) => None,
        };
        let pending = store.stats().await.ok().map(|s| s.pending);
        series.push(Point { t, published, pending });
        last_t = t;
    }
}
