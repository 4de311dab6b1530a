//! `outbox dead list | show | replay | purge`

use outbox::{DeadLetter, DeadLetterQuery, MessageId, OutboxAdmin, ReplaySelector};
use serde::Serialize;

use crate::cli::DeadCommand;

#[derive(Serialize)]
struct DeadView {
    id: String,
    topic: String,
    key: Option<String>,
    attempts: u32,
    last_error: Option<String>,
    created_at_ms: i64,
    dead_at_ms: i64,
    payload_bytes: usize,
}

impl From<&DeadLetter> for DeadView {
    fn from(d: &DeadLetter) -> Self {
        let m = &d.message;
        Self {
            id: m.id.to_string(),
            topic: m.topic.clone(),
            key: m.key.clone(),
            attempts: m.attempts,
            last_error: m.last_error.clone(),
            created_at_ms: m.created_at,
            dead_at_ms: d.dead_at,
            payload_bytes: m.payload.len(),
        }
    }
}

pub(crate) async fn run(store: &dyn OutboxAdmin, command: &DeadCommand) -> anyhow::Result<()> {
    match command {
        DeadCommand::List { topic, limit, json } => {
            let query = DeadLetterQuery { topic: topic.clone(), limit: *limit, ..DeadLetterQuery::default() };
            let dead: Vec<DeadView> = store.dead_letters(&query).await?.iter().map(DeadView::from).collect();
            if *json {
                println!("{}", serde_json::to_string_pretty(&dead)?);
            } else if dead.is_empty() {
                println!("no dead letters");
            } else {
                println!("{:<36}  {:<24}  {:>8}  last error", "id", "topic", "attempts");
                for d in &dead {
                    let err = d.last_error.as_deref().unwrap_or("-");
                    println!("{:<36}  {:<24}  {:>8}  {}", d.id, d.topic, d.attempts, err);
                }
            }
        }
        DeadCommand::Show { id } => {
            let query = DeadLetterQuery { ids: vec![MessageId(*id)], limit: 1, ..DeadLetterQuery::default() };
            let Some(dead) = store.dead_letters(&query).await?.into_iter().next() else {
                anyhow::bail!("no dead letter with id {id}");
            };
            let mut view = serde_json::to_value(DeadView::from(&dead))?;
            view["headers"] = serde_json::to_value(&dead.message.headers)?;
            view["payload"] = match std::str::from_utf8(&dead.message.payload) {
                Ok(text) => serde_json::from_str(text).unwrap_or_else(|_| text.into()),
                Err(_) => format!("<{} bytes of binary>", dead.message.payload.len()).into(),
            };
            println!("{}", serde_json::to_string_pretty(&view)?);
        }
        DeadCommand::Replay { ids, all, topic } => {
            let selector = if *all {
                ReplaySelector::All
            } else if let Some(t) = topic {
                ReplaySelector::Topic(t.clone())
            } else {
                // Check first so an unknown id is reported and nothing else changes.
                let wanted: Vec<MessageId> = ids.iter().map(|u| MessageId(*u)).collect();
                let query = DeadLetterQuery { ids: wanted.clone(), limit: wanted.len(), ..DeadLetterQuery::default() };
                let found: Vec<MessageId> = store.dead_letters(&query).await?.iter().map(|d| d.message.id).collect();
                let missing: Vec<String> =
                    wanted.iter().filter(|id| !found.contains(id)).map(ToString::to_string).collect();
                if !missing.is_empty() {
                    anyhow::bail!("no dead letter with id {}; nothing replayed", missing.join(", "));
                }
                ReplaySelector::Ids(wanted)
            };
            let n = store.replay(&selector).await?;
            println!("replayed {n} dead letter(s)");
        }
        DeadCommand::Purge { older_than } => {
            let n = store.purge_dead(*older_than).await?;
            println!("purged {n} dead letter(s) older than {}", humantime::format_duration(*older_than));
        }
    }
    Ok(())
}
