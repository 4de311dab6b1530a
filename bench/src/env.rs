//! The servers the bench talks to, fresh tables and streams, and fast pre-filling.

use std::sync::Arc;
use std::time::Duration;

use outbox::nats::async_nats;
use outbox::sea_orm::{SqlStore, SqlStoreConfig, migrate};
use outbox::{Bus, MessageId};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection};

/// Connections shared by every scenario.
pub(crate) struct Env {
    pub(crate) db: DatabaseConnection,
    pub(crate) nats: async_nats::Client,
    pub(crate) redis: outbox::redis::redis::aio::ConnectionManager,
}

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

pub(crate) fn suffix() -> String {
    uuid::Uuid::now_v7().simple().to_string()[20..].to_owned()
}

impl Env {
    pub(crate) async fn connect() -> Result<Self, Box<dyn std::error::Error>> {
        let pg_url = var("OUTBOX_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test");
        let mut opts = ConnectOptions::new(pg_url);
        opts.max_connections(16).sqlx_logging(false);
        let db = Database::connect(opts).await?;
        let nats = outbox::nats::connect(&var("OUTBOX_TEST_NATS_URL", "nats://127.0.0.1:4222")).await?;
        let redis_url = var("OUTBOX_TEST_REDIS_URL", "redis://127.0.0.1:6379");
        let redis = outbox::redis::connect(&redis_url).await?;
        Ok(Self { db, nats, redis })
    }

    /// A migrated outbox table of its own.
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

    /// A JetStream stream of its own; returns (bus, stream name, subject prefix).
    pub(crate) async fn jetstream(&self) -> (Arc<outbox::nats::JetStreamBus>, String, String) {
        let s = suffix();
        let (stream, prefix) = (format!("BENCH_{s}"), format!("bench{s}."));
        let bus = outbox::nats::JetStreamBus::builder(self.nats.clone()).subject_prefix(&prefix).build().expect("bus");
        outbox::nats::ensure_stream(bus.context(), &outbox::nats::StreamSpec::new(&stream, [format!("{prefix}>")]))
            .await
            .expect("stream");
        (Arc::new(bus), stream, prefix)
    }

    pub(crate) async fn drop_stream(&self, stream: &str) {
        let js = async_nats::jetstream::new(self.nats.clone());
        let _ = js.delete_stream(stream).await;
    }

    /// A Redis Streams bus on a prefix of its own (no dedup, as the raw baseline has none).
    pub(crate) async fn redis_bus(&self) -> (Arc<dyn Bus>, String) {
        let prefix = format!("bench:{}:", suffix());
        let bus = outbox::redis::RedisStreamsBus::builder(self.redis.clone())
            .stream_prefix(&prefix)
            .dedup(outbox::redis::Dedup::Off)
            .build()
            .await
            .expect("redis bus");
        (Arc::new(bus), prefix)
    }

    pub(crate) async fn drop_redis_prefix(&self, prefix: &str) {
        let mut c = self.redis.clone();
        let keys: Vec<String> =
            outbox::redis::redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut c).await.unwrap_or_default();
        for k in keys {
            let _: outbox::redis::redis::RedisResult<i64> =
                outbox::redis::redis::cmd("DEL").arg(k).query_async(&mut c).await;
        }
    }
}

/// A bench outbox table.
pub(crate) struct Table {
    pub(crate) name: String,
    pub(crate) store: SqlStore,
    pub(crate) db: DatabaseConnection,
}

impl Table {
    /// Inserts `n` pending messages of 256-byte payloads over 1,000 keys in one statement per
    /// 50,000 rows (server-side `generate_series`), as old enough for any sweep.
    pub(crate) async fn prefill(&self, n: usize, topic: &str, keyed: bool) {
        let key = if keyed { "'key-' || (g % 1000)" } else { "NULL" };
        let mut done = 0;
        while done < n {
            let chunk = (n - done).min(50_000);
            let sql = format!(
                "INSERT INTO \"{t}\" (id, topic, msg_key, payload, headers, status, attempts, created_at, available_at) \
                 SELECT gen_random_uuid(), '{topic}', {key}, decode(repeat('ab', 256), 'hex'), '{{}}', 0, 0, 0, 0 \
                 FROM generate_series({from}, {to}) g",
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
        let stmt = sea_orm::Statement::from_string(sea_orm::DbBackend::Postgres, sql);
        self.db.query_one_raw(stmt).await.expect("probe").is_some()
    }

    /// Waits until the table is empty of pending rows (or `timeout`).
    pub(crate) async fn wait_drained(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if !self.any_pending().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        false
    }

    pub(crate) async fn drop(&self) {
        let _ = self.db.execute_unprepared(&format!("DROP TABLE IF EXISTS \"{}\"", self.name)).await;
    }
}

/// Parses the message id out of broker headers.
pub(crate) fn id_of(value: &str) -> Option<MessageId> {
    value.parse().ok()
}
