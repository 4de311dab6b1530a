//! Outbox benchmarks against the local Postgres, NATS JetStream and Redis.
//!
//! ```sh
//! cargo run --release -p outbox-bench -- [--quick] [--json results.json] [--only drain,latency]
//! ```
//!
//! Every scenario runs its baseline in the same process run, so the ratios hold on a noisy
//! shared machine. A full run also rewrites the generated block of `docs/benchmarks.md`.

mod cpu;
mod drain;
mod env;
mod idle;
mod kafka;
mod keys;
mod latency;
mod machine;
mod phases;
mod probe;
mod report;
mod store;
mod writer;

use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, Subcommand};

/// The sections, in the order they run.
const SECTIONS: [&str; 7] = ["store", "drain", "keys", "kafka", "latency", "writer", "idle"];

#[derive(Debug, Parser)]
#[command(about = "Outbox benchmarks against the local Postgres, NATS JetStream and Redis")]
struct Args {
    /// A short run (under 60 s) for spot checks; does not touch docs/benchmarks.md by default.
    #[arg(long)]
    quick: bool,
    /// Where to write the results as JSON.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench-results.json"))]
    json: PathBuf,
    /// Rewrite the generated block of this Markdown file (default: docs/benchmarks.md on a full
    /// run of every section, nothing otherwise).
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Only these sections (store, drain, keys, kafka, latency, writer, idle); default all; drain and
    /// kafka run store too.
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(SECTIONS))]
    only: Vec<String>,
    /// Messages per drain (default 200,000; 20,000 with --quick).
    #[arg(long)]
    n: Option<usize>,
    /// Print, per relay drain, the time its relays spent claiming, publishing and settling.
    #[arg(long)]
    phases: bool,
    #[command(subcommand)]
    child: Option<Child>,
}

#[derive(Debug, Subcommand)]
enum Child {
    /// Internal: the relay process of the cross-process latency scenario.
    #[command(hide = true)]
    Relay {
        #[arg(long)]
        table: String,
        #[arg(long)]
        prefix: String,
    },
}

impl Args {
    fn wants(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == section)
    }

    fn markdown_path(&self) -> Option<PathBuf> {
        match &self.markdown {
            Some(p) => Some(p.clone()),
            None if !self.quick && self.only.is_empty() && self.n.is_none() => {
                Some(PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/benchmarks.md")))
            }
            None => None,
        }
    }
}

/// The command line as typed, with the binary path shortened to the cargo invocation.
fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut cmd = "cargo run --release -p outbox-bench".to_owned();
    if !args.is_empty() {
        cmd.push_str(" -- ");
        cmd.push_str(&args.join(" "));
    }
    cmd
}

#[tokio::main]
async fn main() -> Result<(), env::BoxError> {
    let args = Args::parse();
    if let Some(Child::Relay { table, prefix }) = &args.child {
        return latency::relay_process(table, prefix).await;
    }
    // On a runtime worker, as a relay's tasks run: `main` itself sleeps on a futex between
    // wake-ups, which would add a thread switch to every database round trip.
    tokio::spawn(run(args)).await?
}

async fn run(args: Args) -> Result<(), env::BoxError> {
    let mut env = env::Env::connect().await?;
    env.phases = args.phases;
    let mut report = report::Report::new(command_line());
    report.machine(machine::Machine::probe(&env).await);
    let started = Instant::now();
    report::print_header();
    // The drain takes its SQL floor from the store section, so it runs that too.
    if args.wants("store") || args.wants("drain") || args.wants("kafka") {
        let plan = drain::Plan::new(args.quick, args.n);
        let raw_sql_at = store::run(&env, &mut report, plan.store_round_rows, plan.store_rounds).await;
        let seed =
            if args.wants("drain") { Some(drain::run(&env, &mut report, &plan, &raw_sql_at).await) } else { None };
        if args.wants("kafka") {
            let seed = match seed {
                Some(s) => s,
                None => drain::seed_style(&env, plan.n_seed).await.0,
            };
            kafka::run(&env, &mut report, &plan, &raw_sql_at, seed).await;
        }
    }
    if args.wants("keys") {
        keys::run(&env, &mut report, &drain::Plan::new(args.quick, args.n)).await;
    }
    if args.wants("latency") {
        latency::run(&env, &mut report, args.quick).await;
    }
    if args.wants("writer") {
        writer::run(&env, &mut report, args.quick).await;
    }
    if args.wants("idle") {
        idle::run(&env, &mut report, args.quick).await;
    }
    report.elapsed(started.elapsed());
    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.json, report.json())?;
    let json = args.json.canonicalize().unwrap_or(args.json.clone());
    println!("\nfinished in {:.0} s; JSON in {}", started.elapsed().as_secs_f64(), json.display());
    if let Some(path) = args.markdown_path() {
        let doc = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".to_owned());
        std::fs::write(&path, report::splice(&doc, &report.markdown()))?;
        println!("tables written to {}", path.canonicalize().unwrap_or(path).display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_arguments() {
        let a = Args::try_parse_from(["outbox-bench", "--quick", "--only", "drain,idle"]).unwrap();
        assert!(a.quick && a.wants("drain") && a.wants("idle") && !a.wants("latency"));
        assert_eq!(a.markdown_path(), None);
        let a = Args::try_parse_from(["outbox-bench"]).unwrap();
        assert!(a.wants("writer") && a.markdown_path().is_some_and(|p| p.ends_with("docs/benchmarks.md")));
        assert!(Args::try_parse_from(["outbox-bench", "--only", "nope"]).is_err());
        let a = Args::try_parse_from(["outbox-bench", "relay", "--table", "t", "--prefix", "p."]).unwrap();
        assert!(matches!(a.child, Some(Child::Relay { .. })));
    }

    #[test]
    fn drain_plans_scale_with_n() {
        let quick = drain::Plan::new(true, None);
        assert_eq!((quick.n, quick.relays.as_slice()), (20_000, &[1, 4][..]));
        let full = drain::Plan::new(false, Some(1_000));
        assert_eq!((full.n, full.n_batch1), (1_000, 100));
    }
}
