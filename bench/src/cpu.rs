//! Where the CPU time goes: per-process counters from `/proc`, grouped by server.
//!
//! Everything (Postgres, NATS, Redis, the bench and other people's builds) shares two cores,
//! so a scenario is often bounded by total CPU rather than by any one component. Reading
//! `/proc/<pid>/stat` before and after a scenario says which component used it.
//! Other people's Postgres backends and builds land in `other`.

use std::fs;
use std::time::Instant;

use serde::Serialize;

/// Clock ticks per second of `/proc` CPU counters (`CLK_TCK`, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// Accumulated CPU ticks per component at one instant.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Snapshot {
    at: Option<Instant>,
    postgres: u64,
    nats: u64,
    redis: u64,
    bench: u64,
    /// Machine-wide busy ticks (all cores, every process).
    machine_busy: u64,
}

/// CPU seconds used per component between two snapshots.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub(crate) struct Usage {
    /// Wall-clock seconds between the snapshots.
    pub(crate) wall_s: f64,
    pub(crate) postgres_s: f64,
    pub(crate) nats_s: f64,
    pub(crate) redis_s: f64,
    /// This process and its children (the cross-process relay).
    pub(crate) bench_s: f64,
    /// Everything else that ran meanwhile (other engineers' builds and tests).
    pub(crate) other_s: f64,
}

impl Usage {
    /// Cores kept busy on average, all processes included.
    pub(crate) fn busy_cores(&self) -> f64 {
        (self.postgres_s + self.nats_s + self.redis_s + self.bench_s + self.other_s) / self.wall_s.max(1e-9)
    }

    /// A short "CPU per 1,000 items" summary, e.g. `pg 9.1 · nats 3.2 · bench 4.0 ms/1k; other 0.1 cores`.
    pub(crate) fn per_thousand(&self, items: usize) -> String {
        let k = (items as f64 / 1000.0).max(1e-9);
        let ms = |s: f64| s * 1000.0 / k;
        let mut parts = vec![format!("pg {:.1}", ms(self.postgres_s))];
        if self.nats_s > 0.005 {
            parts.push(format!("nats {:.1}", ms(self.nats_s)));
        }
        if self.redis_s > 0.005 {
            parts.push(format!("redis {:.1}", ms(self.redis_s)));
        }
        parts.push(format!("bench {:.1}", ms(self.bench_s)));
        format!("CPU ms/1k: {}; {}", parts.join(" · "), self.load())
    }
}

impl Usage {
    /// Both spans together, as if measured back to back.
    pub(crate) fn plus(&self, other: &Self) -> Self {
        Self {
            wall_s: self.wall_s + other.wall_s,
            postgres_s: self.postgres_s + other.postgres_s,
            nats_s: self.nats_s + other.nats_s,
            redis_s: self.redis_s + other.redis_s,
            bench_s: self.bench_s + other.bench_s,
            other_s: self.other_s + other.other_s,
        }
    }

    /// `"1.62 of 2 cores busy (0.35 other)"`: how loaded the machine was.
    pub(crate) fn load(&self) -> String {
        format!("{:.2} of 2 cores busy ({:.2} other)", self.busy_cores(), self.other_s / self.wall_s.max(1e-9))
    }
}

impl Snapshot {
    /// Reads the counters now. Postgres processes count only when their pid is in `pg_pids`
    /// (the bench's own backends and the server's background workers), since other
    /// people's tests share the server.
    pub(crate) fn take(pg_pids: &[u32]) -> Self {
        let mut s = Self { at: Some(Instant::now()), machine_busy: machine_busy(), ..Self::default() };
        let me = std::process::id();
        let Ok(dir) = fs::read_dir("/proc") else { return s };
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
            let Some((comm, ticks, ppid)) = parse_stat(&stat) else { continue };
            match comm {
                "postgres" if pg_pids.contains(&pid) => s.postgres += ticks,
                "nats-server" => s.nats += ticks,
                "redis-server" => s.redis += ticks,
                _ if pid == me || ppid == me => s.bench += ticks,
                _ => {}
            }
        }
        s
    }

    /// Usage from `self` (earlier) to `later`.
    pub(crate) fn until(&self, later: &Self) -> Usage {
        let d = |a: u64, b: u64| b.saturating_sub(a) as f64 / TICKS_PER_SEC;
        let wall_s = match (self.at, later.at) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        let ours = d(self.postgres, later.postgres)
            + d(self.nats, later.nats)
            + d(self.redis, later.redis)
            + d(self.bench, later.bench);
        Usage {
            wall_s,
            postgres_s: d(self.postgres, later.postgres),
            nats_s: d(self.nats, later.nats),
            redis_s: d(self.redis, later.redis),
            bench_s: d(self.bench, later.bench),
            other_s: (d(self.machine_busy, later.machine_busy) - ours).max(0.0),
        }
    }
}

/// `(comm, utime + stime, ppid)` from the text of `/proc/<pid>/stat`.
fn parse_stat(stat: &str) -> Option<(&str, u64, u32)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = &stat[open + 1..close];
    // Fields after the command: state(3) ppid(4) … utime(14) stime(15), numbered from 1.
    let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let ppid = rest.get(1)?.parse().ok()?;
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, utime + stime, ppid))
}

/// Busy ticks of all cores from the first line of `/proc/stat` (total minus idle and iowait).
fn machine_busy() -> u64 {
    let Ok(stat) = fs::read_to_string("/proc/stat") else { return 0 };
    let Some(line) = stat.lines().next() else { return 0 };
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = v.iter().take(8).sum();
    total.saturating_sub(v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_with_spaces_in_the_name() {
        let line = "4242 (nats server) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 12 0 1 1 1";
        assert_eq!(parse_stat(line), Some(("nats server", 325, 1)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn usage_summarises_per_thousand() {
        let u = Usage { wall_s: 2.0, postgres_s: 1.0, nats_s: 0.5, redis_s: 0.0, bench_s: 0.5, other_s: 0.2 };
        assert!((u.busy_cores() - 1.1).abs() < 1e-9);
        let text = u.per_thousand(10_000);
        assert!(text.starts_with("CPU ms/1k: pg 100.0 · nats 50.0 · bench 50.0"), "{text}");
    }
}
