//! Which rows a claim may take, as SQL: claimable (pending, due, not under a live claim),
//! head of its key (or in a planned run of it), and, for sweeps, within the window past the
//! rows that are stuck.

use outbox_core::{MessageId, UnixMillis};

use super::{SqlStore, limit_value};
use crate::sql::{Dialect, Query, Tid};

/// Which rows a claim may take, besides being claimable.
#[derive(Clone, Copy)]
pub(crate) enum Pick<'a> {
    Ids(&'a [MessageId]),
    /// Keyed rows of held partitions, by `seq`: the runs [`crate::partition`] planned from
    /// the pending rows of those partitions, which only this store claims. What the plan
    /// could not see is checked per row: no dead row comes earlier in its key, nor, while
    /// `unpartitioned` rows are pending (a writer from before partitions), one of those.
    Runs {
        seqs: &'a [i64],
        created_before: UnixMillis,
        unpartitioned: bool,
    },
    /// Rows without a partition (all rows, with partitioning off).
    /// `window`: only rows whose `seq` is within this many of the sweep's start
    /// ([`SqlStore::push_window_start`]).
    Due {
        created_before: UnixMillis,
        limit: usize,
        window: Option<i64>,
    },
}

impl SqlStore {
    /// `c` is claimable: pending, due, not under a live claim, and the head of its key (for
    /// runs: its earlier unfinished rows are all in the run); and
    /// not among `held`, rows this claim's own transaction already locked (its own locks do
    /// not make `SKIP LOCKED` skip them).
    pub(crate) fn push_claimable(&self, q: &mut Query, now: UnixMillis, pick: Pick<'_>, held: &[Tid]) {
        q.push(" WHERE c.status = 0 AND ");
        Self::push_due_and_free(q, "c.", now);
        match pick {
            Pick::Runs { unpartitioned, .. } => {
                self.push_no_earlier(q, "p.status = 2");
                if unpartitioned {
                    self.push_no_earlier(q, "p.status = 0 AND p.partition_no IS NULL");
                }
            }
            Pick::Ids(_) | Pick::Due { .. } => self.push_no_earlier(q, "p.status IN (0, 2)"),
        }
        #[cfg(feature = "postgres")]
        if !held.is_empty() {
            q.push(" AND NOT ").tid_in("c.ctid", held);
        }
        #[cfg(not(feature = "postgres"))]
        let _ = held;
        match pick {
            Pick::Ids(ids) => {
                q.push(" AND ").uuid_in("c.id", ids.iter().map(|id| id.as_uuid()));
                self.push_held_partition(q, now);
            }
            Pick::Runs { seqs, created_before, .. } => {
                q.push(" AND ").i64_in("c.seq", seqs.iter().copied());
                q.push(" AND ");
                Self::push_old_enough(q, "c.", created_before);
                self.push_held_partition(q, now);
            }
            Pick::Due { created_before, limit, window } => {
                if self.ownership.is_some() {
                    q.push(" AND c.partition_no IS NULL");
                }
                q.push(" AND ");
                Self::push_old_enough(q, "c.", created_before);
                match window {
                    // `lo` is where the window starts ([`SqlStore::push_window_start`]).
                    Some(len) if self.dialect == Dialect::Postgres => {
                        q.push(" AND c.seq >= (SELECT m FROM lo) AND c.seq < (SELECT m FROM lo) + ").bind(len);
                    }
                    // The scan starts at the oldest pending row; the rows before the window's
                    // start are few, and each fails its head-of-key probe.
                    Some(len) => {
                        q.push(" AND c.seq < ");
                        self.push_window_start(q, now, len);
                        q.push(" + ").bind(len);
                    }
                    None => {}
                }
                q.push(" ORDER BY c.seq LIMIT ").bind(limit_value(limit));
            }
        }
    }

    /// ` AND` no row of `c`'s key that comes before it matches `earlier` (on `p`).
    fn push_no_earlier(&self, q: &mut Query, earlier: &str) {
        q.push(" AND (c.msg_key IS NULL OR NOT EXISTS (SELECT 1 FROM ")
            .push(&self.table)
            .push(" p WHERE p.msg_key = c.msg_key AND p.seq < c.seq AND ")
            .push(earlier)
            .push("))");
    }

    /// The row (its columns prefixed with `p`, such as `c.`) is due and under no live claim.
    pub(crate) fn push_due_and_free(q: &mut Query, p: &str, now: UnixMillis) {
        q.push(p)
            .push("available_at <= ")
            .bind(now)
            .push(" AND (")
            .push(p)
            .push("claimed_until IS NULL OR ")
            .push(p)
            .push("claimed_until <= ")
            .bind(now)
            .push(")");
    }

    /// A sweep's age rule for the row (columns prefixed with `p`): retries and expired claims
    /// need only be due, new rows must have been created by `created_before`.
    pub(crate) fn push_old_enough(q: &mut Query, p: &str, created_before: UnixMillis) {
        q.push("(")
            .push(p)
            .push("attempts > 0 OR ")
            .push(p)
            .push("claimed_until IS NOT NULL OR ")
            .push(p)
            .push("created_at <= ")
            .bind(created_before)
            .push(")");
    }

    /// With partitioning: the row has no partition, or this store holds its partition now.
    /// Checked in the claim itself, so a store whose hold lapsed cannot claim from it.
    pub(crate) fn push_held_partition(&self, q: &mut Query, now: UnixMillis) {
        if let Some(own) = &self.ownership {
            q.push(" AND (c.partition_no IS NULL OR EXISTS (SELECT 1 FROM ")
                .push(&own.leases_table)
                .push(" l WHERE l.partition_no = c.partition_no AND l.owner = ")
                .bind(own.owner)
                .push(" AND l.lease_until > ")
                .bind(now)
                .push("))");
        }
    }

    /// Starts a Postgres claim of a windowed sweep with `WITH lo AS (…)`: where the window
    /// starts, for [`push_claimable`](Self::push_claimable) to bound its scan on both sides.
    /// Referenced twice, the CTE is computed once, and the scan starts at a live row: deleted
    /// rows not yet vacuumed are walked once per claim rather than twice (a quarter of a
    /// claim's time while a backlog drains).
    pub(crate) fn push_window_cte(&self, q: &mut Query, pick: Pick<'_>, now: UnixMillis) {
        if let (Dialect::Postgres, Pick::Due { window: Some(len), .. }) = (self.dialect, pick) {
            q.push("WITH lo AS (SELECT ");
            self.push_window_start(q, now, len);
            q.push(" AS m) ");
        }
    }

    /// Where a sweep's window starts: the first of the `len` oldest pending rows that is not
    /// stuck, or the row after them all. A stuck row cannot be claimed soon, whatever else is
    /// settled: it waits behind a dead row of its key, or it or an earlier row of its key is
    /// backing off. Starting at the oldest pending row instead, one dead head with a waiting
    /// successor would pin the window while newer rows move past its end. Rows behind an
    /// in-flight head are not stuck: they follow as soon as it settles. (`d.status IN (0, 2)`
    /// lets Postgres use its partial head-of-key index.)
    pub(crate) fn push_window_start(&self, q: &mut Query, now: UnixMillis, len: i64) {
        let t = &self.table;
        let unpartitioned = if self.ownership.is_some() { " AND w.partition_no IS NULL" } else { "" };
        q.push("COALESCE((SELECT s.seq FROM (SELECT w.seq, w.msg_key, w.available_at FROM ")
            .push(t)
            .push(" w WHERE w.status = 0")
            .push(unpartitioned)
            .push(" ORDER BY w.seq LIMIT ")
            .bind(len)
            .push(") s WHERE s.available_at <= ")
            .bind(now)
            .push(" AND (s.msg_key IS NULL OR NOT EXISTS (SELECT 1 FROM ")
            .push(t)
            .push(" d WHERE d.msg_key = s.msg_key AND d.seq < s.seq AND d.status IN (0, 2) AND (d.status = 2 OR ")
            .push("d.available_at > ")
            .bind(now)
            .push("))) ORDER BY s.seq LIMIT 1), (SELECT MAX(s.seq) + 1 FROM (SELECT w.seq FROM ")
            .push(t)
            .push(" w WHERE w.status = 0")
            .push(unpartitioned)
            .push(" ORDER BY w.seq LIMIT ")
            .bind(len)
            .push(") s))");
    }
}
