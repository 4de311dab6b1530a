//! `cargo run --release -p outbox-bench -- [--quick] [--json results.json]`
//!
//! Every scenario runs its baseline in the same process, so ratios hold on a noisy machine.

mod drain;
mod env;
mod idle;
mod latency;
mod report;
mod writer;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Outbox benchmarks against the local Postgres, NATS JetStream and Redis")]
struct Args {
    /// A short run (< 60 s) for spot checks.
    #[arg(long)]
    quick: bool,
    /// Write the results as JSON here.
    #[arg(long, default_value = "target/bench-results.json")]
    json: std::path::PathBuf,
    /// Only these sections (drain, latency, writer, idle); default all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    #[command(subcommand)]
    child: Option<Child>,
}

#[derive(Subcommand)]
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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if let Some(Child::Relay { table, prefix }) = &args.child {
        return latency::relay_process(table, prefix).await;
    }
    let env = env::Env::connect().await?;
    let mut report = report::Report::default();
    let wants = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    let started = std::time::Instant::now();
    println!("| section | scenario | value | vs baseline |\n|---|---|---|---|");
    if wants("drain") {
        drain::run(&env, &mut report, args.quick).await;
    }
    if wants("latency") {
        latency::run(&env, &mut report, args.quick).await;
    }
    if wants("writer") {
        writer::run(&env, &mut report, args.quick).await;
    }
    if wants("idle") {
        idle::run(&env, &mut report, args.quick).await;
    }
    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.json, report.json())?;
    println!("\nfinished in {:.0} s; results in {}", started.elapsed().as_secs_f64(), args.json.display());
    Ok(())
}
