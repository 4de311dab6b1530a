//! `outbox status`

use outbox::OutboxAdmin;
use serde::Serialize;

use crate::cli::StatusArgs;

#[derive(Serialize)]
struct Status {
    pending: u64,
    claimed: u64,
    dead: u64,
    oldest_pending_age_seconds: Option<f64>,
    top_keys: Vec<KeyBacklog>,
}

#[derive(Serialize)]
struct KeyBacklog {
    key: String,
    pending: u64,
}

pub(crate) async fn run(store: &dyn OutboxAdmin, args: &StatusArgs) -> anyhow::Result<()> {
    let stats = store.stats().await?;
    let keys = store.key_backlog(args.top).await?;
    let status = Status {
        pending: stats.pending,
        claimed: stats.claimed,
        dead: stats.dead,
        oldest_pending_age_seconds: stats.oldest_pending_age.map(|d| d.as_secs_f64()),
        top_keys: keys.into_iter().map(|(key, pending)| KeyBacklog { key, pending }).collect(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    let age = status.oldest_pending_age_seconds.map_or_else(
        || "-".to_owned(),
        |s| humantime::format_duration(std::time::Duration::from_secs(s as u64)).to_string(),
    );
    println!("pending   {}", status.pending);
    println!("claimed   {}", status.claimed);
    println!("dead      {}", status.dead);
    println!("oldest    {age}");
    if !status.top_keys.is_empty() {
        println!("\ntop keys by backlog");
        let width = status.top_keys.iter().map(|k| k.key.len()).max().unwrap_or(3).max(3);
        println!("{:<width$}  pending", "key");
        for k in &status.top_keys {
            println!("{:<width$}  {}", k.key, k.pending);
        }
    }
    Ok(())
}
