//! `complete`, `fail` and `release` as statements: by id under a lease, or by `ctid` in a
//! held claim's transaction.

use outbox_core::message::duration_millis;
use outbox_core::{Disposition, Failure, Lease, MessageId, Retention, UnixMillis};
use uuid::Uuid;

use super::{SqlStore, truncate_error};
use crate::sql::Query;
#[cfg(feature = "postgres")]
use crate::sql::{Dialect, Tid};

impl SqlStore {
    /// `AND claim_token = … AND claimed_until > now AND status = 0`: the lease still holds.
    /// Without a lease (rows locked by a held claim) only `status = 0`.
    pub(crate) fn push_held_by(q: &mut Query, lease: Option<&Lease>, now: UnixMillis) {
        if let Some(lease) = lease {
            q.push(" AND claim_token = ").bind(lease.token).push(" AND claimed_until > ").bind(now);
        }
        q.push(" AND status = 0");
    }

    /// Marks `rows` published (deletes them, or keeps them as status 1).
    pub(crate) fn complete_query(&self, rows: Rows<'_>, lease: Option<&Lease>, now: UnixMillis) -> Query {
        let mut q = Query::new(self.dialect);
        match self.config.retention {
            Retention::Delete => q.push("DELETE FROM ").push(&self.table).push(" WHERE "),
            Retention::KeepPublished => q
                .push("UPDATE ")
                .push(&self.table)
                .push(" SET status = 1, finished_at = ")
                .bind(now)
                .push(", claimed_until = NULL, claim_token = NULL WHERE "),
        };
        match rows {
            Rows::Ids(ids) => q.uuid_in("id", ids.iter().map(|id| id.as_uuid())),
            #[cfg(feature = "postgres")]
            Rows::Tids(tids) => q.tid_in("ctid", tids),
        };
        Self::push_held_by(&mut q, lease, now);
        q
    }

    /// Gives back rows claimed under `lease` untouched: no attempt counted, claimable again.
    pub(crate) fn release_query(&self, ids: &[MessageId], lease: &Lease, now: UnixMillis) -> Query {
        let mut q = Query::new(self.dialect);
        q.push("UPDATE ")
            .push(&self.table)
            .push(" SET claimed_until = NULL, claim_token = NULL WHERE ")
            .uuid_in("id", ids.iter().map(|id| id.as_uuid()));
        Self::push_held_by(&mut q, Some(lease), now);
        q
    }

    /// One `UPDATE` that records `failures`: attempts + 1, last error, and a retry time or
    /// the dead-letter state.
    pub(crate) fn fail_query(&self, failures: &[Failure], lease: Option<&Lease>, now: UnixMillis) -> Query {
        #[cfg(feature = "postgres")]
        if self.dialect == Dialect::Postgres {
            return self.fail_query_postgres(failures, lease, now);
        }
        // CASE expressions give each message its own values.
        let mut q = Query::new(self.dialect);
        q.push("UPDATE ").push(&self.table).push(" SET attempts = attempts + 1, last_error = CASE id");
        for f in failures {
            q.push(" WHEN ").bind(f.id.as_uuid()).push(" THEN ").bind(truncate_error(&f.error));
        }
        q.push(" END");
        let retries: Vec<_> = failures
            .iter()
            .filter_map(|f| match f.disposition {
                Disposition::RetryAfter(d) => Some((f.id, now.saturating_add(duration_millis(d)))),
                Disposition::DeadLetter => None,
            })
            .collect();
        if !retries.is_empty() {
            q.push(", available_at = CASE id");
            for (id, at) in &retries {
                q.push(" WHEN ").bind(id.as_uuid()).push(" THEN ").bind(*at);
            }
            q.push(" ELSE available_at END");
        }
        let dead: Vec<Uuid> =
            failures.iter().filter(|f| f.disposition == Disposition::DeadLetter).map(|f| f.id.as_uuid()).collect();
        if !dead.is_empty() {
            q.push(", status = CASE WHEN ").uuid_in("id", dead.iter().copied()).push(" THEN 2 ELSE status END");
            q.push(", finished_at = CASE WHEN ")
                .uuid_in("id", dead.iter().copied())
                .push(" THEN ")
                .bind(now)
                .push(" ELSE finished_at END");
        }
        q.push(", claimed_until = NULL, claim_token = NULL WHERE ")
            .uuid_in("id", failures.iter().map(|f| f.id.as_uuid()));
        Self::push_held_by(&mut q, lease, now);
        q
    }

    /// Postgres: the per-message values travel as arrays, so the SQL text is the same for
    /// every batch size and its prepared statement is reused.
    #[cfg(feature = "postgres")]
    pub(crate) fn fail_query_postgres(&self, failures: &[Failure], lease: Option<&Lease>, now: UnixMillis) -> Query {
        use crate::schema::status;

        let ids: Vec<Uuid> = failures.iter().map(|f| f.id.as_uuid()).collect();
        let errors: Vec<String> = failures.iter().map(|f| truncate_error(&f.error)).collect();
        let statuses: Vec<i16> = failures
            .iter()
            .map(|f| if f.disposition == Disposition::DeadLetter { status::DEAD } else { status::PENDING })
            .collect();
        let available: Vec<i64> = failures
            .iter()
            .map(|f| match f.disposition {
                Disposition::RetryAfter(d) => now.saturating_add(duration_millis(d)),
                Disposition::DeadLetter => now,
            })
            .collect();
        let mut q = Query::new(self.dialect);
        q.push("UPDATE ")
            .push(&self.table)
            .push(" AS t SET attempts = t.attempts + 1, last_error = f.error, status = f.status, ")
            .push("available_at = CASE WHEN f.status = 2 THEN t.available_at ELSE f.available_at END, ")
            .push("finished_at = CASE WHEN f.status = 2 THEN ")
            .bind(now)
            .push(" ELSE t.finished_at END, claimed_until = NULL, claim_token = NULL FROM unnest(")
            .bind(ids)
            .push("::uuid[], ")
            .bind(errors)
            .push("::text[], ")
            .bind(statuses)
            .push("::smallint[], ")
            .bind(available)
            .push("::bigint[]) AS f(id, error, status, available_at) WHERE t.id = f.id");
        if let Some(lease) = lease {
            q.push(" AND t.claim_token = ").bind(lease.token).push(" AND t.claimed_until > ").bind(now);
        }
        q.push(" AND t.status = 0");
        q
    }
}

/// Rows to settle: by message id, or by `ctid` when a held claim has them locked.
#[derive(Clone, Copy)]
pub(crate) enum Rows<'a> {
    Ids(&'a [MessageId]),
    #[cfg(feature = "postgres")]
    Tids(&'a [Tid]),
}
