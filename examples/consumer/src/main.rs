//! Reads what the outbox published and prints each event with its outbox headers.
//!
//! `consumer nats` reads a JetStream stream with a durable pull consumer and acks each message;
//! `consumer redis` reads Redis streams with a consumer group and XACKs each entry.

use std::time::Duration;

use clap::{Parser, Subcommand};
use futures::StreamExt;

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
    Nats {
        #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
        url: String,
        #[arg(long, env = "STREAM", default_value = "OUTBOX")]
        stream: String,
        /// Durable consumer name.
        #[arg(long, default_value = "consumer")]
        durable: String,
    },
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

fn show(id: &str, key: &str, traceparent: &str, payload: &[u8]) {
    println!("event id={id} key={key} traceparent={traceparent} payload={}", String::from_utf8_lossy(payload));
}

async fn nats(url: &str, stream: &str, durable: &str, max: usize) -> Result<(), Box<dyn std::error::Error>> {
    let client = async_nats::connect(url).await?;
    let js = async_nats::jetstream::new(client.clone());
    let consumer = js
        .get_stream(stream)
        .await?
        .get_or_create_consumer(
            durable,
            async_nats::jetstream::consumer::pull::Config { durable_name: Some(durable.into()), ..Default::default() },
        )
        .await?;
    let mut messages = consumer.messages().await?.take(max);
    while let Some(msg) = messages.next().await {
        let msg = msg?;
        let header = |name: &str| msg.headers.as_ref().and_then(|h| h.get(name)).map_or("-", |v| v.as_str()).to_owned();
        show(&header("Outbox-Message-Id"), &header("Outbox-Key"), &header("traceparent"), &msg.payload);
        msg.ack().await.map_err(|e| e.to_string())?;
    }
    // Acks are queued, not awaited: flush so the last ones reach the server before exit.
    client.flush().await?;
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
            Source::Nats { url, stream, durable } => nats(url, stream, durable, max).await,
            Source::Redis { url, streams, group } => redis(url, streams, group, max).await,
        }
    };
    tokio::select! {
        r = run => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = tokio::time::sleep(Duration::MAX) => Ok(()),
    }
}
