//! Reads what the outbox published and prints each event with its outbox headers.
//!
//! `consumer nats` runs `outbox::nats::consumer::JetStreamConsumer` with the SQLite inbox: each
//! event is stored in an `events` table in the same transaction that records its id, so a
//! redelivered event is skipped (`duplicate id=… skipped`) and stored once; `consumer redis`
//! reads Redis streams with a consumer group and XACKs each entry (at least once).

use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Print the events an outbox relay published")]
struct Args {
    /// Exit after this many events (default: run until Ctrl-C).
    #[arg(long, global = true)]
    max: Option<usize>,
    #[command(subcommand)]
    source: Source,
}

#[derive(Subcommand)]
enum Source {
    /// A JetStream stream.
    Nats(NatsArgs),
    /// Redis streams, read with a consumer group.
    Redis {
        #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
        url: String,
        /// Comma-separated stream keys.
        #[arg(long, env = "STREAMS", default_value = "outbox:users.registered", value_delimiter = ',')]
        streams: Vec<String>,
        #[arg(long, default_value = "consumer")]
        group: String,
    },
}

/// Where and how the JetStream consumer reads, and its inbox.
#[derive(clap::Args)]
struct NatsArgs {
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    url: String,
    #[arg(long, env = "STREAM", default_value = "OUTBOX")]
    stream: String,
    /// Durable consumer name; also the inbox's consumer name.
    #[arg(long, default_value = "consumer")]
    durable: String,
    /// Only subjects matching this (default: the whole stream).
    #[arg(long)]
    filter: Option<String>,
    /// Where messages that keep failing go; a stream must capture it.
    #[arg(long, default_value = "outbox.dead")]
    dead_letter: String,
    /// The SQLite file holding the inbox and the `events` table.
    #[arg(long, env = "INBOX", default_value = "consumer-inbox.db")]
    inbox: std::path::PathBuf,
}

fn show(id: &str, key: &str, traceparent: &str, payload: &[u8]) {
    println!("event id={id} key={key} traceparent={traceparent} payload={}", String::from_utf8_lossy(payload));
}

async fn nats(args: &NatsArgs, max: usize) -> Result<(), Box<dyn std::error::Error>> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use outbox::consumer::{ConsumerConfig, Delivery, HandlerError, Processed, handler_fn};
    use outbox::inbox::{Inbox, InboxConfig, migrate_inbox};
    use outbox::nats::consumer::JetStreamConsumer;
    use sea_orm::{ConnectionTrait, Statement, Value};

    // The inbox and the effects share one database, so both commit or neither does.
    let db = outbox::sea_orm::connect_sqlite(&args.inbox).await?;
    let config = InboxConfig::default().consumer(args.durable.clone());
    migrate_inbox(&db, &config).await?;
    db.execute_unprepared("CREATE TABLE IF NOT EXISTS events (message_id TEXT PRIMARY KEY, payload BLOB NOT NULL)")
        .await?;
    let inbox = Inbox::new(db, config)?;

    let seen = Arc::new(AtomicUsize::new(0));
    let all_seen = Arc::new(tokio::sync::Notify::new());
    let handler = handler_fn({
        let (seen, all_seen) = (seen.clone(), all_seen.clone());
        move |d: Delivery| {
            let (inbox, seen, all_seen) = (inbox.clone(), seen.clone(), all_seen.clone());
            async move {
                let insert = Statement::from_sql_and_values(
                    sea_orm::DbBackend::Sqlite,
                    "INSERT INTO events (message_id, payload) VALUES (?, ?)",
                    [Value::from(d.id.clone()), Value::from(d.payload.clone())],
                );
                let outcome = inbox
                    .process(&d.id, move |txn| Box::pin(async move { txn.execute_raw(insert).await.map(|_| ()) }))
                    .await
                    .map_err(HandlerError::from)?;
                let dash = |v: Option<&str>| v.unwrap_or("-").to_owned();
                match outcome {
                    Processed::Done(()) => show(&d.id, &dash(d.key()), &dash(d.traceparent()), &d.payload),
                    Processed::Duplicate => println!("duplicate id={} skipped", d.id),
                }
                if seen.fetch_add(1, Ordering::SeqCst) + 1 >= max {
                    all_seen.notify_one();
                }
                Ok(outcome)
            }
        }
    });
    let js = async_nats::jetstream::new(outbox::nats::connect(&args.url).await?);
    let mut consumer = JetStreamConsumer::new(js, &args.stream, &args.durable, &args.dead_letter)
        .config(ConsumerConfig::default().per_key(true));
    if let Some(filter) = &args.filter {
        consumer = consumer.filter_subject(filter);
    }
    let running = consumer.spawn(handler).await?;
    tokio::select! {
        () = all_seen.notified() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    // Finishes the handlers in flight and acknowledges them.
    running.shutdown().await?;
    Ok(())
}

async fn redis(url: &str, streams: &[String], group: &str, max: usize) -> Result<(), Box<dyn std::error::Error>> {
    use redis::streams::{StreamReadOptions, StreamReadReply};
    let mut conn = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
    for s in streams {
        // Start from the beginning; an existing group is fine.
        let _: redis::RedisResult<()> =
            redis::cmd("XGROUP").arg("CREATE").arg(s).arg(group).arg("0").arg("MKSTREAM").query_async(&mut conn).await;
    }
    let opts = StreamReadOptions::default().group(group, "consumer-1").count(100).block(1000);
    let ids: Vec<&str> = streams.iter().map(|_| ">").collect();
    let mut seen = 0;
    while seen < max {
        let reply: StreamReadReply = redis::AsyncCommands::xread_options(&mut conn, streams, &ids, &opts).await?;
        for key in reply.keys {
            for entry in key.ids {
                let field = |name: &str| entry.get::<String>(name).unwrap_or_else(|| "-".into());
                let payload: Vec<u8> = entry.get("payload").unwrap_or_default();
                show(&field("Outbox-Message-Id"), &field("Outbox-Key"), &field("traceparent"), &payload);
                let _: i64 = redis::AsyncCommands::xack(&mut conn, &key.key, group, &[&entry.id]).await?;
                seen += 1;
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let max = args.max.unwrap_or(usize::MAX);
    let run = async {
        match &args.source {
            Source::Nats(nats_args) => nats(nats_args, max).await,
            Source::Redis { url, streams, group } => redis(url, streams, group, max).await,
        }
    };
    tokio::select! {
        r = run => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = tokio::time::sleep(Duration::MAX) => Ok(()),
    }
}
