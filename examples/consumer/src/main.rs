//! Reads what the outbox published and prints each event with its outbox headers.
//!
//! `consumer nats` runs `outbox::nats::consumer::JetStreamConsumer` with the inbox: each event
//! is stored in an `events` table in the same transaction that records its id, so a
//! redelivered event is skipped (`duplicate id=… skipped`) and stored once. `--inbox` is a
//! SQLite file, or a `postgres://` URL that several consumer processes can share.
//! `consumer redis` reads Redis streams with a consumer group and XACKs each entry (at least
//! once).
//!
//! `--per-key` (on by default) orders a key's events within what one process fetched; with
//! several processes on one durable, `--key-sequence` also orders them across processes, by a
//! per-key `"seq"` in the payload.
//!
//! Test hook: `CONSUMER_CRASH_AFTER_COMMIT=<n>` stops the n-th committed event after its
//! commit and before its ack, prints `crash point: committed, not acknowledged id=<id>` and
//! waits to be killed (it aborts after 60 s).

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
    /// The database holding the inbox and the events table: a SQLite file, or a
    /// `postgres://` URL (then several consumer processes can share it).
    #[arg(long, env = "INBOX", default_value = "consumer-inbox.db")]
    inbox: String,
    /// The inbox table.
    #[arg(long, default_value = outbox::inbox::DEFAULT_INBOX_TABLE)]
    inbox_table: String,
    /// The table the events are stored in (the consumer's business effect).
    #[arg(long, default_value = "events")]
    events_table: String,
    /// Handle one key's messages (`Outbox-Key`) one after another, keys in parallel.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    per_key: bool,
    /// Handlers running at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Messages per fetch.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Seconds JetStream waits for an acknowledgement before it redelivers (applies when the
    /// durable consumer is created).
    #[arg(long, default_value_t = 30)]
    ack_wait: u64,
    /// Largest Postgres pool: a handler holds a connection only inside its transaction.
    #[arg(long, default_value_t = 17)]
    connections: u32,
    /// Store each key's events in the order of the `"seq"` number in their JSON payload (0, 1,
    /// 2, … per key), also across processes sharing the database, where `--per-key` alone
    /// orders only what one process fetched: an event waits until its key's previous one is
    /// stored. Give `--concurrency` at least `--batch`, so what it waits for is never queued
    /// behind it; an event that waited a third of `--ack-wait` is redelivered later.
    #[arg(long)]
    key_sequence: bool,
}

/// Test hook, off unless set: `CONSUMER_CRASH_AFTER_COMMIT=<n>` makes the n-th committed
/// event stop between its inbox commit and its ack, print [`CRASH_MARKER`] and wait to be
/// killed, so a test can kill the process at exactly that point.
const CRASH_AFTER_COMMIT: &str = "CONSUMER_CRASH_AFTER_COMMIT";

/// What the crash hook prints (then ` id=<message id>`) once the transaction committed.
const CRASH_MARKER: &str = "crash point: committed, not acknowledged";

/// Rejects table names that are not plain identifiers, since they go into SQL text.
fn plain_identifier(name: &str) -> Result<&str, String> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok { Ok(name) } else { Err(format!("not a plain table name: {name:?}")) }
}

fn show(id: &str, key: &str, traceparent: &str, payload: &[u8]) {
    println!("event id={id} key={key} traceparent={traceparent} payload={}", String::from_utf8_lossy(payload));
}

async fn nats(args: &NatsArgs, max: usize) -> Result<(), Box<dyn std::error::Error>> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use outbox::consumer::{ConsumerConfig, Delivery, Processed, handler_fn};
    use outbox::inbox::{Inbox, InboxConfig, migrate_inbox};
    use outbox::nats::consumer::JetStreamConsumer;
    use sea_orm::{ConnectionTrait, DbBackend, TransactionTrait};

    // The inbox and the effects share one database, so both commit or neither does.
    let db = if args.inbox.starts_with("postgres://") || args.inbox.starts_with("postgresql://") {
        let mut options = sea_orm::ConnectOptions::new(args.inbox.clone());
        options.max_connections(args.connections.max(2)).sqlx_logging(false);
        sea_orm::Database::connect(options).await?
    } else {
        outbox::sea_orm::connect_sqlite(&args.inbox).await?
    };
    let backend = db.get_database_backend();
    // Postgres' CREATE TABLE IF NOT EXISTS is not safe against itself: processes starting
    // together take turns on an advisory lock, held by this transaction until the tables exist.
    let setup = if backend == DbBackend::Postgres {
        let txn = db.begin().await?;
        txn.execute_unprepared("SELECT pg_advisory_xact_lock(7170657201)").await?;
        Some(txn)
    } else {
        None
    };
    let config = InboxConfig::default().table(args.inbox_table.clone()).consumer(args.durable.clone());
    migrate_inbox(&db, &config).await?;
    let events = Events::new(backend, &args.events_table, args.key_sequence)?;
    for ddl in events.create() {
        db.execute_unprepared(&ddl).await?;
    }
    if let Some(txn) = setup {
        txn.commit().await?;
    }
    let events = Arc::new(events);
    let inbox = Inbox::new(db, config)?;
    // Waiting on a key's previous event longer than this gives up and redelivers later.
    let wait_limit = Duration::from_secs(args.ack_wait) / 3;
    let crash_after: Option<usize> = std::env::var(CRASH_AFTER_COMMIT).ok().map(|v| v.parse()).transpose()?;

    let seen = Arc::new(AtomicUsize::new(0));
    let committed = Arc::new(AtomicUsize::new(0));
    let all_seen = Arc::new(tokio::sync::Notify::new());
    let handler = handler_fn({
        let (seen, all_seen) = (seen.clone(), all_seen.clone());
        move |d: Delivery| {
            let (inbox, events) = (inbox.clone(), events.clone());
            let (seen, all_seen, committed) = (seen.clone(), all_seen.clone(), committed.clone());
            async move {
                let outcome = events.store(&inbox, &d, wait_limit).await?;
                let dash = |v: Option<&str>| v.unwrap_or("-").to_owned();
                match outcome {
                    Processed::Done(()) => show(&d.id, &dash(d.key()), &dash(d.traceparent()), &d.payload),
                    Processed::Duplicate => println!("duplicate id={} skipped", d.id),
                }
                if outcome == Processed::Done(()) && crash_after == Some(committed.fetch_add(1, Ordering::SeqCst) + 1) {
                    crash_point(&d.id).await;
                }
                if seen.fetch_add(1, Ordering::SeqCst) + 1 >= max {
                    all_seen.notify_one();
                }
                Ok(outcome)
            }
        }
    });
    let js = async_nats::jetstream::new(outbox::nats::connect(&args.url).await?);
    let config = ConsumerConfig::default()
        .per_key(args.per_key)
        .concurrency(args.concurrency)
        .batch(args.batch)
        .ack_wait(Duration::from_secs(args.ack_wait));
    let mut consumer = JetStreamConsumer::new(js, &args.stream, &args.durable, &args.dead_letter).config(config);
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

/// The consumer's effect: one row per event in the events table, written in the inbox's
/// transaction; with a key sequence, also each key's next expected `seq`.
struct Events {
    backend: sea_orm::DbBackend,
    table: String,
    /// The `<table>_keys` table, when events are stored in key sequence.
    keys: Option<String>,
}

/// Why storing an event in key sequence did not happen (the transaction rolled back).
#[derive(Debug)]
enum StoreError {
    Db(sea_orm::DbErr),
    /// The key's next expected `seq` is not this event's.
    NotNext {
        next: i64,
    },
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Db(e) => e.fmt(f),
            Self::NotNext { next } => write!(f, "the key's next event is seq {next}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<sea_orm::DbErr> for StoreError {
    fn from(e: sea_orm::DbErr) -> Self {
        Self::Db(e)
    }
}

impl Events {
    fn new(backend: sea_orm::DbBackend, table: &str, key_sequence: bool) -> Result<Self, String> {
        let table = plain_identifier(table)?.to_owned();
        let keys = key_sequence.then(|| format!("{table}_keys"));
        Ok(Self { backend, table, keys })
    }

    fn postgres(&self) -> bool {
        self.backend == sea_orm::DbBackend::Postgres
    }

    /// Placeholder number `n` of this backend.
    fn ph(&self, n: usize) -> String {
        if self.postgres() { format!("${n}") } else { "?".to_owned() }
    }

    fn create(&self) -> Vec<String> {
        let t = &self.table;
        // `n` numbers the effects in the order they were written; `message_id` is deliberately
        // not unique, so an effect applied twice would show as two rows instead of an error.
        let (serial, bytes) = if self.postgres() {
            ("n BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "BYTEA")
        } else {
            ("n INTEGER PRIMARY KEY AUTOINCREMENT", "BLOB")
        };
        let mut ddl = vec![format!(
            "CREATE TABLE IF NOT EXISTS {t} ({serial}, message_id TEXT NOT NULL, msg_key TEXT, payload {bytes} NOT NULL)"
        )];
        if let Some(keys) = &self.keys {
            ddl.push(format!("CREATE TABLE IF NOT EXISTS {keys} (msg_key TEXT PRIMARY KEY, next_seq BIGINT NOT NULL)"));
        }
        ddl
    }

    fn stmt(&self, sql: String, values: Vec<sea_orm::Value>) -> sea_orm::Statement {
        sea_orm::Statement::from_sql_and_values(self.backend, sql, values)
    }

    fn insert(&self, d: &outbox::consumer::Delivery) -> sea_orm::Statement {
        let (t, p) = (&self.table, |n| self.ph(n));
        let sql = format!("INSERT INTO {t} (message_id, msg_key, payload) VALUES ({}, {}, {})", p(1), p(2), p(3));
        self.stmt(sql, vec![d.id.clone().into(), d.key().map(str::to_owned).into(), d.payload.clone().into()])
    }

    /// Stores `d` through the inbox: once, and in key sequence when that is on.
    async fn store(
        &self,
        inbox: &outbox::inbox::Inbox,
        d: &outbox::consumer::Delivery,
        wait_limit: Duration,
    ) -> Result<outbox::consumer::Processed<()>, outbox::consumer::HandlerError> {
        use outbox::consumer::HandlerError;
        use outbox::inbox::InboxError;
        use sea_orm::ConnectionTrait;

        let Some(keys) = &self.keys else {
            let insert = self.insert(d);
            let work =
                inbox.process(&d.id, move |txn| Box::pin(async move { txn.execute_raw(insert).await.map(|_| ()) }));
            return work.await.map_err(HandlerError::from);
        };
        let key = d.key().ok_or_else(|| HandlerError::reject("--key-sequence: the event has no Outbox-Key"))?;
        let seq = payload_seq(&d.payload)
            .ok_or_else(|| HandlerError::reject("--key-sequence: the payload has no \"seq\" number"))?;
        let p = |n| self.ph(n);
        let lock = if self.postgres() { " FOR UPDATE" } else { "" };
        let (init, read) = (
            format!("INSERT INTO {keys} (msg_key, next_seq) VALUES ({}, 0) ON CONFLICT DO NOTHING", p(1)),
            format!("SELECT next_seq FROM {keys} WHERE msg_key = {}", p(1)),
        );
        let writes = || {
            let advance = |n| format!("UPDATE {keys} SET next_seq = {} WHERE msg_key = {}", p(n), p(n + 1));
            if self.postgres() {
                // One round trip for both writes.
                let (t, insert) = (&self.table, "(message_id, msg_key, payload) VALUES ($1, $2, $3)");
                let sql = format!("WITH advanced AS ({}) INSERT INTO {t} {insert}", advance(4));
                let values =
                    vec![d.id.clone().into(), key.into(), d.payload.clone().into(), (seq + 1).into(), key.into()];
                vec![self.stmt(sql, values)]
            } else {
                vec![self.insert(d), self.stmt(advance(1), vec![(seq + 1).into(), key.into()])]
            }
        };
        let started = std::time::Instant::now();
        loop {
            let step = SequencedStep {
                init: self.stmt(init.clone(), vec![key.into()]),
                locked: self.stmt(format!("{read}{lock}"), vec![key.into()]),
                writes: writes(),
                seq,
            };
            match inbox.process(&d.id, move |txn| step.run(txn)).await {
                Ok(outcome) => return Ok(outcome),
                Err(InboxError::Handler(StoreError::NotNext { next })) if next > seq => {
                    // Another message already took this place in the key's sequence.
                    return Err(HandlerError::reject(format!(
                        "key {key}: seq {seq} is stored already (next is {next})"
                    )));
                }
                Err(InboxError::Handler(StoreError::NotNext { .. })) if started.elapsed() < wait_limit => {
                    // An earlier event of the key is in flight, here or in another process:
                    // wait (without a transaction) until it is stored, then try again.
                    let mut pause = Duration::from_millis(2);
                    while started.elapsed() < wait_limit {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_millis(50));
                        let row = inbox.db().query_one_raw(self.stmt(read.clone(), vec![key.into()])).await;
                        let next = row.ok().flatten().and_then(|r| r.try_get_by_index::<i64>(0).ok());
                        if next.is_some_and(|next| next >= seq) {
                            break;
                        }
                    }
                }
                Err(InboxError::Handler(e @ StoreError::NotNext { .. })) => {
                    return Err(HandlerError::retry(format!("key {key}: seq {seq} waited {wait_limit:?}; {e}")));
                }
                Err(e) => return Err(HandlerError::from(e)),
            }
        }
    }
}

/// The statements storing one event in key sequence, run in the inbox's transaction.
struct SequencedStep {
    init: sea_orm::Statement,
    locked: sea_orm::Statement,
    /// The event's row and the key's advance to `seq + 1`.
    writes: Vec<sea_orm::Statement>,
    seq: i64,
}

impl SequencedStep {
    /// The key's row is locked (Postgres) or the database is (SQLite's `BEGIN IMMEDIATE`)
    /// until commit, so the check and the advance cannot interleave with another process's.
    fn run(self, txn: &sea_orm::DatabaseTransaction) -> outbox::inbox::InboxFuture<'_, (), StoreError> {
        use sea_orm::ConnectionTrait;
        Box::pin(async move {
            let mut row = txn.query_one_raw(self.locked.clone()).await?;
            if row.is_none() {
                // The key's first event creates its row; a concurrent first one is waited on.
                txn.execute_raw(self.init).await?;
                row = txn.query_one_raw(self.locked).await?;
            }
            let next: i64 = match row {
                Some(row) => row.try_get_by_index(0)?,
                None => 0,
            };
            if next != self.seq {
                return Err(StoreError::NotNext { next });
            }
            for write in self.writes {
                txn.execute_raw(write).await?;
            }
            Ok(())
        })
    }
}

/// The `"seq":<number>` of a JSON payload (a scan, so the example needs no JSON parser).
fn payload_seq(payload: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(payload).ok()?;
    let rest = text[text.find("\"seq\"")? + 5..].trim_start().strip_prefix(':')?.trim_start();
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The crash hook's stop: the transaction of `id` committed and its ack is not sent. Waits for
/// the test's SIGKILL; aborts on its own if none comes, so no stray process is left behind.
async fn crash_point(id: &str) {
    use std::io::Write;
    println!("{CRASH_MARKER} id={id}");
    let _ = std::io::stdout().flush();
    tokio::time::sleep(Duration::from_secs(60)).await;
    std::process::abort();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_seq_reads_the_number_and_refuses_anything_else() {
        assert_eq!(payload_seq(br#"{"key":"k7","seq":123}"#), Some(123));
        assert_eq!(payload_seq(br#"{ "seq" : 4 , "n": 1}"#), Some(4));
        assert_eq!(payload_seq(br#"{"seq":"4"}"#), None);
        assert_eq!(payload_seq(br#"{"n":4}"#), None);
        assert!(plain_identifier("events_1").is_ok() && plain_identifier("events; DROP").is_err());
    }
}
