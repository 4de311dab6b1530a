//! The servers the bench talks to, fresh tables and streams per scenario, and fast pre-filling.

use std::sync::Arc;
use std::time::Duration;

use outbox::nats::async_nats;
use outbox::redis::redis;
use outbox::sea_orm::schema::partition_of;
use outbox::sea_orm::{SqlStore, SqlStoreConfig, migrate};
use outbox::{Bus, MessageId};

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};

use crate::cpu::Snapshot;

/// Boxed error of the bench's setup steps.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connections shared by every scenario.
pub(crate) struct Env {
    pub(crate) pg_url: String,
    pub(crate) db: DatabaseConnection,
    pub(crate) nats: async_nats::Client,
    pub(crate) redis: redis::aio::ConnectionManager,
    /// Print where each relay drain spent its time (`--phases`).
    pub(crate) phases: bool,
}

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// A short unique suffix for table, stream and key names.
pub(crate) fn suffix() -> String {
    uuid::Uuid::now_v7().simple().to_string()[20..].to_owned()
}

/// A raw Postgres statement.
pub(crate) fn stmt(sql: impl Into<String>) -> Statement {
    Statement::from_string(DbBackend::Postgres, sql.into())
}

/// The `application_name` of the bench's Postgres connections, to tell its backends apart.
const APPLICATION_NAME: &str = "outbox-bench";

/// Opens a Postgres pool of `max` connections, tagged with [`APPLICATION_NAME`].
pub(crate) async fn pg_pool(url: &str, max: u32) -> Result<DatabaseConnection, BoxError> {
    let sep = if url.contains('?') { '&' } else { '?' };
    let mut opts = ConnectOptions::new(format!("{url}{sep}application_name={APPLICATION_NAME}"));
    opts.max_connections(max).min_connections(1).sqlx_logging(false);
    Ok(Database::connect(opts).await?)
}

impl Env {
    /// Connects to the servers named by `OUTBOX_TEST_{POSTGRES,NATS,REDIS}_URL` (default: local).
    pub(crate) async fn connect() -> Result<Self, BoxError> {
        let pg_url = var("OUTBOX_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test");
        let db = pg_pool(&pg_url, 20).await?;
        let nats = outbox::nats::connect(&var("OUTBOX_TEST_NATS_URL", "nats://127.0.0.1:4222")).await?;
        let redis = outbox::redis::connect(&var("OUTBOX_TEST_REDIS_URL", "redis://127.0.0.1:6379")).await?;
        Ok(Self { pg_url, db, nats, redis, phases: false })
    }

    /// A migrated outbox table of its own (and a `LISTEN`/`NOTIFY` channel of the same name
    /// when `notify`).
    pub(crate) async fn table(&self, notify: bool) -> Table {
        let name = format!("bench_{}", suffix());
        let mut config = SqlStoreConfig::default().table(name.clone());
        if notify {
            config = config.notify_channel(name.clone());
        }
        migrate(&self.db, &config).await.expect("migrate");
        let store = SqlStore::new(self.db.clone(), config).expect("store");
        Table { name, store, db: self.db.clone() }
    }

    /// A JetStream stream of its own, and the outbox bus publishing into it (default settings).
    pub(crate) async fn jetstream(&self) -> JetStreamTarget {
        let s = suffix();
        let (stream, prefix) = (format!("BENCH_{s}"), format!("bench{s}."));
        let bus = outbox::nats::JetStreamBus::builder(self.nats.clone()).subject_prefix(&prefix).build().expect("bus");
        let spec = outbox::nats::StreamSpec::new(&stream, [format!("{prefix}>")]);
        outbox::nats::ensure_stream(bus.context(), &spec).await.expect("stream");
        JetStreamTarget { bus: Arc::new(bus), stream, prefix }
    }

    /// Messages stored in a JetStream stream.
    pub(crate) async fn stream_len(&self, stream: &str) -> u64 {
        let js = async_nats::jetstream::new(self.nats.clone());
        match js.get_stream(stream).await {
            Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        }
    }

    /// Deletes a JetStream stream.
    pub(crate) async fn drop_stream(&self, stream: &str) {
        let js = async_nats::jetstream::new(self.nats.clone());
        let _ = js.delete_stream(stream).await;
    }

    /// A Redis Streams bus (default settings: `Dedup::Auto`) on a key prefix of its own.
    pub(crate) async fn redis_bus(&self) -> (Arc<outbox::redis::RedisStreamsBus>, String) {
        let prefix = format!("bench:{}:", suffix());
        let bus = outbox::redis::RedisStreamsBus::builder(self.redis.clone())
            .stream_prefix(&prefix)
            .build()
            .await
            .expect("redis bus");
        (Arc::new(bus), prefix)
    }

    /// Entries in a Redis stream.
    pub(crate) async fn xlen(&self, key: &str) -> u64 {
        let mut c = self.redis.clone();
        redis::cmd("XLEN").arg(key).query_async(&mut c).await.unwrap_or(0)
    }

    /// Deletes every Redis key under `prefix` (the bench's own keys only).
    pub(crate) async fn drop_redis_prefix(&self, prefix: &str) {
        let mut c = self.redis.clone();
        let keys: Vec<String> =
            redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut c).await.unwrap_or_default();
        for k in keys {
            let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(k).query_async(&mut c).await;
        }
    }

    /// CPU counters now (see [`crate::cpu`]).
    pub(crate) async fn cpu(&self) -> Snapshot {
        let sql = format!(
            "SELECT pid FROM pg_stat_activity WHERE application_name = '{APPLICATION_NAME}' \
             OR backend_type <> 'client backend'"
        );
        let rows = self.db.query_all_raw(stmt(sql)).await.unwrap_or_default();
        let pids: Vec<u32> = rows.iter().filter_map(|r| r.try_get_by_index::<i32>(0).ok()).map(|p| p as u32).collect();
        Snapshot::take(&pids)
    }

    /// Checkpoints Postgres has run so far (timed and requested).
    pub(crate) async fn checkpoints(&self) -> i64 {
        let sql = "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter";
        let row = self.db.query_one_raw(stmt(sql)).await.ok().flatten();
        row.and_then(|r| r.try_get_by_index::<i64>(0).ok()).unwrap_or(0)
    }

    /// Runs `CHECKPOINT`, so one forced by the WAL of earlier scenarios does not land inside a
    /// latency measurement (needs superuser; skipped quietly otherwise).
    pub(crate) async fn checkpoint(&self) {
        let _ = self.db.execute_unprepared("CHECKPOINT").await;
    }

    /// `SHOW server_version`.
    pub(crate) async fn postgres_version(&self) -> String {
        let row = self.db.query_one_raw(stmt("SHOW server_version")).await.ok().flatten();
        row.and_then(|r| r.try_get_by_index::<String>(0).ok()).unwrap_or_default()
    }

    /// `redis_version` from `INFO server`.
    pub(crate) async fn redis_version(&self) -> String {
        let mut c = self.redis.clone();
        let info: String = redis::cmd("INFO").arg("server").query_async(&mut c).await.unwrap_or_default();
        info.lines().find_map(|l| l.strip_prefix("redis_version:")).unwrap_or_default().trim().to_owned()
    }
}

/// A JetStream stream and the bus that publishes into it.
pub(crate) struct JetStreamTarget {
    pub(crate) bus: Arc<outbox::nats::JetStreamBus>,
    pub(crate) stream: String,
    pub(crate) prefix: String,
}

/// How the pre-filled messages are keyed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Keys {
    /// No key: no per-key order, any row may be claimed.
    None,
    /// Row `g` has key `key-{g % k}`: `n / k` messages per key, in order.
    Spread(usize),
}

/// A bench outbox table.
pub(crate) struct Table {
    pub(crate) name: String,
    pub(crate) store: SqlStore,
    pub(crate) db: DatabaseConnection,
}

impl Table {
    /// Inserts `n` pending messages with 256-byte payloads on topic `topic`, as old enough for
    /// any sweep: server-side `generate_series`, one statement per 50,000 rows, then `ANALYZE`.
    pub(crate) async fn prefill(&self, n: usize, topic: &str, keys: Keys) {
        // Keyed rows carry their key's partition, as the store's enqueue writes it.
        let (key, partition, join) = match keys {
            Keys::None => ("NULL".to_owned(), "NULL".to_owned(), String::new()),
            Keys::Spread(k) => {
                let partitions = self.store.config().key_partitions;
                let map: Vec<String> = (0..k)
                    .map(|i| {
                        let p = if partitions > 0 {
                            partition_of(&format!("key-{i}"), partitions).to_string()
                        } else {
                            "NULL".to_owned()
                        };
                        format!("({i}, {p})")
                    })
                    .collect();
                let join = format!(" JOIN (VALUES {}) AS m(i, p) ON m.i = g % {k}", map.join(", "));
                (format!("'key-' || (g % {k})"), "m.p::int".to_owned(), join)
            }
        };
        let mut done = 0;
        while done < n {
            let chunk = (n - done).min(50_000);
            let sql = format!(
                "INSERT INTO \"{t}\" (id, topic, msg_key, partition_no, payload, headers, status, attempts, \
                 created_at, available_at) \
                 SELECT gen_random_uuid(), '{topic}', {key}, {partition}, decode(repeat('ab', 256), 'hex'), '{{}}', \
                 0, 0, 0, 0 FROM generate_series({from}, {to}) g{join} ORDER BY g",
                t = self.name,
                from = done + 1,
                to = done + chunk,
            );
            self.db.execute_unprepared(&sql).await.expect("prefill");
            done += chunk;
        }
        self.db.execute_unprepared(&format!("ANALYZE \"{}\"", self.name)).await.expect("analyze");
    }

    /// Whether any row is still pending: one indexed probe, cheap enough to poll during a run.
    pub(crate) async fn any_pending(&self) -> bool {
        let sql = format!("SELECT 1 AS x FROM \"{}\" WHERE status = 0 LIMIT 1", self.name);
        self.db.query_one_raw(stmt(sql)).await.expect("probe").is_some()
    }

    /// Pending rows (a full count; only at the end of a scenario).
    pub(crate) async fn pending(&self) -> usize {
        let sql = format!("SELECT count(*) AS n FROM \"{}\" WHERE status = 0", self.name);
        let row = self.db.query_one_raw(stmt(sql)).await.expect("count").expect("a row");
        row.try_get::<i64>("", "n").unwrap_or(0) as usize
    }

    /// Polls until no row is pending, or `timeout`; true when drained.
    pub(crate) async fn wait_drained(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if !self.any_pending().await {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Drops the table.
    pub(crate) async fn drop(&self) {
        let _ = self.db.execute_unprepared(&format!("DROP TABLE IF EXISTS \"{}\"", self.name)).await;
    }
}

/// The outbox message id in an `Outbox-Message-Id` header value.
pub(crate) fn id_of(value: &str) -> Option<MessageId> {
    value.parse().ok()
}

/// A bus as a trait object.
pub(crate) fn dyn_bus<B: Bus>(bus: Arc<B>) -> Arc<dyn Bus> {
    bus
}
