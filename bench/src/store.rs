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
        let (mut raw, mut dedicated, mut store) = (Tally::default(), Tally::default(), Tally::default());
        let (mut vs_raw, mut vs_dedicated) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let mut round = [Tally::default(), Tally::default(), Tally::default()];
            let (rows, time, cpu) = raw_sql(env, n, batch, Connection::Pool).await;
            round[0].add(rows, time, cpu);
            let (rows, time, cpu) = raw_sql(env, n, batch, Connection::Dedicated).await;
            round[1].add(rows, time, cpu);
            let (rows, time, cpu) = store_claim_complete(env, n, batch).await;
            round[2].add(rows, time, cpu);
            vs_raw.push(round[2].rate() / round[0].rate());
            vs_dedicated.push(round[2].rate() / round[1].rate());
            let [r, d, s] = round;
            raw.add(r.rows, r.time, r.cpu);
            dedicated.add(d.rows, d.time, d.cpu);
            store.add(s.rows, s.time, s.cpu);
        }
        raw_at.push((batch, raw.rate()));
        let n_total = n * rounds;
        let name = format!("raw SQL claim+delete (DELETE … RETURNING), batch {batch}");
        report.add(Row::new("store", name, raw.rate(), "rows/s").n(n_total).cpu(raw.cpu));
        let name = format!("raw SQL claim+delete on one dedicated connection, batch {batch}");
        report.add(Row::new("store", name, dedicated.rate(), "rows/s").n(n_total).cpu(dedicated.cpu));
        let name = format!("store claim_due + complete, batch {batch}");
        let (median, lo, hi) = spread(&vs_raw);
        let (median_dedicated, ..) = spread(&vs_dedicated);
        report.add(
            Row::new("store", name, store.rate(), "rows/s")
                .n(n_total)
                .check(Check::ratio("raw SQL (median of rounds)", median, Some(Goal::AtLeast(0.8))))
                .note(format!("rounds p10–p90 {lo:.2}–{hi:.2}; ratio of totals {:.2}", store.rate() / raw.rate()))
                .check(Check::ratio("raw SQL on one dedicated connection (median of rounds)", median_dedicated, None))
                .cpu(store.cpu),
        );
    }
    raw_at
}

/// How the raw statement gets its connection.
#[derive(Clone, Copy)]
enum Connection {
    /// From the pool for each statement, as `SqlStore` and most applications do (sqlx pings
    /// a connection as it leaves the pool and as it comes back).
    Pool,
    /// One connection taken once and kept.
    Dedicated,
}

/// Raw SQL claim+delete, one statement at a time: the single statement a hand-tuned relay would
/// run. `= ANY(ARRAY(…))` rather than `IN (…)`: the planner then always looks the rows up by
/// key, where `IN` turns into a hash join over the whole table once the batch is more than
/// about 1 % of it (10 ms instead of 3 ms per 1,000 rows on a 50,000-row table).
async fn raw_sql(env: &Env, n: usize, batch: usize, connection: Connection) -> (usize, Duration, Usage) {
    let table = env.table(false).await;
    table.prefill(n, "raw", Keys::None).await;
    let sql = format!(
        "DELETE FROM \"{t}\" WHERE seq = ANY(ARRAY(SELECT seq FROM \"{t}\" WHERE status = 0 ORDER BY seq \
         LIMIT {batch} FOR UPDATE SKIP LOCKED)) RETURNING id, topic, msg_key, payload, headers",
        t = table.name
    );
    let mut conn = table.db.get_postgres_connection_pool().acquire().await.expect("connection");
    let cpu0 = env.cpu().await;
    let start = Instant::now();
    let mut done = 0;
    loop {
        let rows = match connection {
            Connection::Pool => table.db.query_all_raw(stmt(sql.clone())).await.expect("delete").len(),
            Connection::Dedicated => {
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
