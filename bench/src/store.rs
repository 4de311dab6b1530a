//! The store alone: `claim_due` + `complete` against the one SQL statement a hand-tuned relay
//! would run, `DELETE … WHERE seq = ANY(ARRAY(SELECT … FOR UPDATE SKIP LOCKED)) RETURNING`,
//! one statement at a time, no broker.
//!
//! The two alternate in rounds on fresh tables, so a slow spell of the machine hits both.

use std::time::{Duration, Instant};

use outbox::{Lease, OutboxStore};
use sea_orm::ConnectionTrait;
use sea_orm::sqlx;

use crate::cpu::Usage;
use crate::env::{Env, Keys, stmt};
use crate::report::{Check, Goal, Report, Row, spread};

/// Batch sizes measured; the drain section takes its SQL floor from these.
pub(crate) const BATCHES: [usize; 2] = [100, 1000];

/// Rows per second of the raw statement and of the store, summed over the rounds.
#[derive(Default)]
struct Tally {
    rows: usize,
    time: Duration,
    cpu: Usage,
}

impl Tally {
    fn add(&mut self, rows: usize, time: Duration, cpu: Usage) {
        self.rows += rows;
        self.time += time;
        self.cpu = self.cpu.plus(&cpu);
    }

    fn rate(&self) -> f64 {
        self.rows as f64 / self.time.as_secs_f64().max(1e-9)
    }
}

/// Measures each batch size in `rounds` alternating rounds of `n` rows; returns the raw SQL
/// rate per batch size. The store is judged by the median of its per-round ratios.
pub(crate) async fn run(env: &Env, report: &mut Report, n: usize, rounds: usize) -> Vec<(usize, f64)> {
    println!("# store: {rounds} alternating rounds of {n} rows per batch size, 256-byte payloads");
    let mut raw_at = Vec::new();
    for batch in BATCHES {
        // Raw SQL in each form, then the store; summed over the rounds, and ratios per round.
        let mut totals: [Tally; 4] = Default::default();
        let mut ratios: [Vec<f64>; 3] = Default::default();
        for _ in 0..rounds {
            let mut round: [Tally; 4] = Default::default();
            for (tally, raw) in round.iter_mut().zip(Raw::ALL) {
                let (rows, time, cpu) = raw_sql(env, n, batch, raw).await;
                tally.add(rows, time, cpu);
            }
            let (rows, time, cpu) = store_claim_complete(env, n, batch).await;
            round[3].add(rows, time, cpu);
            for (ratio, raw) in ratios.iter_mut().zip(&round) {
                ratio.push(round[3].rate() / raw.rate());
            }
            for (total, r) in totals.iter_mut().zip(round) {
                total.add(r.rows, r.time, r.cpu);
            }
        }
        let [raw, dedicated, in_subquery, store] = totals;
        raw_at.push((batch, raw.rate()));
        let n_total = n * rounds;
        for (tally, raw) in [&raw, &dedicated, &in_subquery].into_iter().zip(Raw::ALL) {
            let name = format!("{}, batch {batch}", raw.name());
            report.add(Row::new("store", name, tally.rate(), "rows/s").n(n_total).cpu(tally.cpu));
        }
        let name = format!("store claim_due + complete, batch {batch}");
        let (median, lo, hi) = spread(&ratios[0]);
        report.add(
            Row::new("store", name, store.rate(), "rows/s")
                .n(n_total)
                .check(Check::ratio("raw SQL (median of rounds)", median, Some(Goal::AtLeast(0.8))))
                .note(format!("rounds p10–p90 {lo:.2}–{hi:.2}; ratio of totals {:.2}", store.rate() / raw.rate()))
                .check(Check::ratio(
                    "raw SQL on one dedicated connection (median of rounds)",
                    spread(&ratios[1]).0,
                    None,
                ))
                .check(Check::ratio("raw SQL with `id IN (…)` (median of rounds)", spread(&ratios[2]).0, None))
                .cpu(store.cpu),
        );
    }
    raw_at
}

/// The raw statement's forms.
#[derive(Clone, Copy)]
enum Raw {
    /// `seq = ANY(ARRAY(…))`, a connection from the pool for each statement, as `SqlStore` and
    /// most applications do (sqlx pings a connection as it leaves the pool and as it comes
    /// back). The planner always looks the rows up by key.
    Pool,
    /// The same on one connection taken once and kept.
    Dedicated,
    /// `id IN (…)`, as issue #3 words it, through the pool: the planner turns it into a hash
    /// join over the whole table once the batch is more than about 1 % of it (10 ms instead of
    /// 3 ms per 1,000 rows on a 50,000-row table), so it is the weaker baseline.
    InSubquery,
}

impl Raw {
    const ALL: [Raw; 3] = [Raw::Pool, Raw::Dedicated, Raw::InSubquery];

    fn name(self) -> &'static str {
        match self {
            Raw::Pool => "raw SQL claim+delete (DELETE … WHERE seq = ANY(ARRAY(SELECT …)) RETURNING)",
            Raw::Dedicated => "raw SQL claim+delete on one dedicated connection",
            Raw::InSubquery => "raw SQL claim+delete as DELETE … WHERE id IN (SELECT …) RETURNING",
        }
    }
}

/// Raw SQL claim+delete, one statement at a time: the single statement a hand-tuned relay would
/// run.
async fn raw_sql(env: &Env, n: usize, batch: usize, raw: Raw) -> (usize, Duration, Usage) {
    let table = env.table(false).await;
    table.prefill(n, "raw", Keys::None).await;
    let (t, returning) = (&table.name, "RETURNING id, topic, msg_key, payload, headers");
    let claim = format!("SELECT {{}} FROM \"{t}\" WHERE status = 0 ORDER BY seq LIMIT {batch} FOR UPDATE SKIP LOCKED");
    let sql = match raw {
        Raw::Pool | Raw::Dedicated => {
            format!("DELETE FROM \"{t}\" WHERE seq = ANY(ARRAY({})) {returning}", claim.replace("{}", "seq"))
        }
        Raw::InSubquery => format!("DELETE FROM \"{t}\" WHERE id IN ({}) {returning}", claim.replace("{}", "id")),
    };
    let mut conn = table.db.get_postgres_connection_pool().acquire().await.expect("connection");
    let cpu0 = env.cpu().await;
    let start = Instant::now();
    let mut done = 0;
    loop {
        let rows = match raw {
            Raw::Pool | Raw::InSubquery => table.db.query_all_raw(stmt(sql.clone())).await.expect("delete").len(),
            Raw::Dedicated => {
                let query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
                query.fetch_all(&mut *conn).await.expect("delete").len()
            }
        };
        if rows == 0 {
            break;
        }
        done += rows;
    }
    let r = (done, start.elapsed(), cpu0.until(&env.cpu().await));
    table.drop().await;
    r
}

/// The store's own `claim_due` + `complete`, in a loop.
async fn store_claim_complete(env: &Env, n: usize, batch: usize) -> (usize, Duration, Usage) {
    let table = env.table(false).await;
    table.prefill(n, "store", Keys::None).await;
    let cpu0 = env.cpu().await;
    let start = Instant::now();
    let mut done = 0;
    loop {
        let lease = Lease::new(Duration::from_secs(30));
        let claimed = table.store.claim_due(batch, Duration::ZERO, &lease).await.expect("claim");
        if claimed.is_empty() {
            break;
        }
        let ids: Vec<_> = claimed.iter().map(|m| m.id).collect();
        done += table.store.complete(&ids, &lease).await.expect("complete") as usize;
    }
    let r = (done, start.elapsed(), cpu0.until(&env.cpu().await));
    table.drop().await;
    r
}
