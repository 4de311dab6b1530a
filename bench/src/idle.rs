//! How many queries an idle relay sends: a counting store around the real one, and a
//! statement counter on its connection pool.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outbox::sea_orm::SqlStore;
use outbox::{ChannelNotifier, FallbackConfig, Relay};

use crate::env::{Env, dyn_bus, pg_pool};
use crate::probe::ProbeStore;
use crate::report::{Check, Goal, Report, Row};

/// Runs an idle relay (listener on an in-process channel that never fires, fallback every
/// 500 ms) over an empty table, counting store calls and the SQL statements its pool sends.
pub(crate) async fn run(env: &Env, report: &mut Report, quick: bool) {
    let table = env.table(false).await;
    // A pool of its own, so the statement counter sees only this relay.
    let mut db = pg_pool(&env.pg_url, 4).await.expect("pool");
    let statements: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let log = statements.clone();
    db.set_metric_callback(move |_| log.lock().unwrap_or_else(|e| e.into_inner()).push(Instant::now()));
    let sql_store = SqlStore::new(db, table.store.config().clone()).expect("store");
    let store = Arc::new(ProbeStore::new(sql_store));
    let target = env.jetstream().await;
    let interval = Duration::from_millis(500);
    let relay = Relay::builder(store.clone(), dyn_bus(target.bus.clone()))
        .notifier(Arc::new(ChannelNotifier::new(16)))
        .fallback(FallbackConfig::default().interval(interval))
        .build()
        .expect("relay")
        .spawn();
    tokio::time::sleep(Duration::from_secs(1)).await; // start-up sweep
    let window = if quick { Duration::from_secs(3) } else { Duration::from_secs(10) };
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let end = Instant::now();
    relay.shutdown().await.expect("shutdown");

    let within = |t: &Instant| *t >= start && *t < end;
    let calls: Vec<(Instant, &str)> =
        store.calls.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().filter(|(t, _)| within(t)).collect();
    // A sweep runs `concurrency` workers that each call claim_due at once: one burst.
    let claims: Vec<Instant> = calls.iter().filter(|(_, m)| *m == "claim_due").map(|(t, _)| *t).collect();
    let sweeps = bursts(&claims, Duration::from_millis(100));
    let sql: Vec<Instant> =
        statements.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().filter(within).collect();
    let all_sweeps: Vec<Instant> = store
        .calls
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(_, m)| *m == "claim_due")
        .map(|(t, _)| *t)
        .collect();
    let between = outside_sweeps(&sql, &all_sweeps, Duration::from_millis(100));
    let secs = window.as_secs_f64();
    let per_sweep = |x: usize| x as f64 / sweeps.max(1) as f64;
    let mut methods: Vec<&str> = calls.iter().map(|(_, m)| *m).collect();
    methods.sort_unstable();
    methods.dedup();
    let by_method: Vec<String> =
        methods.iter().map(|m| format!("{m} × {}", calls.iter().filter(|(_, c)| c == m).count())).collect();
    report.add(Row::new(
        "idle",
        format!("sweeps in {secs:.0} s, fallback interval {interval:?} (bursts of claim_due calls)"),
        sweeps as f64,
        "sweeps",
    ));
    report.add(Row::new("idle", "store calls per sweep", per_sweep(calls.len()), "calls").note(format!(
        "{:.1} per second; {}",
        calls.len() as f64 / secs,
        by_method.join(", ")
    )));
    report.add(
        Row::new(
            "idle",
            "SQL statements per sweep (sea-orm metric callback on the relay's pool)",
            per_sweep(sql.len()),
            "statements",
        )
        .note(format!("{:.1} per second", sql.len() as f64 / secs)),
    );
    report.add(
        Row::new(
            "idle",
            "SQL statements between sweeps (> 100 ms after the last claim_due)",
            between as f64,
            "statements",
        )
        .check(Check::absolute(between as f64, Goal::AtMost(0.0), "statements")),
    );
    table.drop().await;
    env.drop_stream(&target.stream).await;
}

/// How many groups `times` (sorted) form when gaps longer than `gap` separate them.
fn bursts(times: &[Instant], gap: Duration) -> usize {
    times.windows(2).filter(|w| w[1].duration_since(w[0]) > gap).count() + usize::from(!times.is_empty())
}

/// How many of `times` came more than `slack` after the latest of `sweeps` (both sorted), or
/// before any sweep.
fn outside_sweeps(times: &[Instant], sweeps: &[Instant], slack: Duration) -> usize {
    times
        .iter()
        .filter(|t| {
            let last = sweeps.iter().rev().find(|s| *s <= *t);
            last.is_none_or(|s| t.duration_since(*s) > slack)
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_statements_between_sweeps() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let times = [at(0), at(3), at(500), at(502), at(504), at(1000)];
        assert_eq!(bursts(&times, Duration::from_millis(100)), 3);
        assert_eq!(bursts(&[], Duration::from_millis(100)), 0);
        let sweeps = [at(0), at(500)];
        assert_eq!(outside_sweeps(&times, &sweeps, Duration::from_millis(100)), 1);
    }
}
