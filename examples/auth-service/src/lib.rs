//! The auth service from the article this project grew from, made real: `POST /users`
//! inserts a user (a SeaORM entity) and enqueues `UserRegistered` in the same transaction, and
//! answers 409 Conflict for an email that is already registered; a relay in the same process
//! publishes the event to NATS JetStream or Redis Streams; `GET /outbox/status` shows the
//! backlog.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use outbox::sea_orm::{SqlStore, SqlStoreConfig, WriteError, connect_sqlite, migrate};
use outbox::{Bus, ChannelNotifier, OutboxEvent, OutboxStore, Relay, RelayHandle};
use sea_orm::{ActiveModelTrait, ConnectionTrait, DatabaseConnection, Schema, Set};
use serde::{Deserialize, Serialize};

/// The `users` table.
pub mod users {
    use sea_orm::entity::prelude::*;

    /// One registered user.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "users")]
    pub struct Model {
        /// A UUIDv7, assigned by the service.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        /// Unique: a second registration with it is refused with 409 Conflict.
        #[sea_orm(unique)]
        pub email: String,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Where the service keeps its data and sends its events.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `sqlite://path`, `postgres://…` or `mysql://…`.
    pub database_url: String,
    /// The broker.
    pub bus: BusSettings,
    /// Outbox table name.
    pub outbox_table: String,
}

/// Which broker, and where.
#[derive(Clone, Debug)]
pub enum BusSettings {
    /// JetStream.
    Nats {
        /// Server URL.
        url: String,
        /// Stream to create or check.
        stream: String,
        /// Subject prefix before each topic.
        prefix: String,
    },
    /// Redis Streams.
    Redis {
        /// Server URL.
        url: String,
        /// Stream-key prefix before each topic.
        prefix: String,
    },
}

impl Settings {
    /// From `DATABASE_URL` (default: a SQLite file), and `NATS_URL` or `REDIS_URL`.
    pub fn from_env() -> Result<Self, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let bus = match (var("NATS_URL"), var("REDIS_URL")) {
            (Some(url), _) => BusSettings::Nats { url, stream: "AUTH".into(), prefix: "auth.".into() },
            (None, Some(url)) => BusSettings::Redis { url, prefix: "auth:".into() },
            (None, None) => return Err("set NATS_URL or REDIS_URL".into()),
        };
        Ok(Self {
            database_url: var("DATABASE_URL").unwrap_or_else(|| "sqlite://auth-service.db".into()),
            bus,
            outbox_table: var("OUTBOX_TABLE").unwrap_or_else(|| outbox::sea_orm::DEFAULT_TABLE.into()),
        })
    }
}

/// The event, as consumers receive it (JSON).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserRegistered {
    /// The new user's id.
    pub user_id: String,
    /// Their email.
    pub email: String,
}

impl OutboxEvent for UserRegistered {
    fn topic(&self) -> &str {
        "users.registered"
    }
    fn key(&self) -> Option<String> {
        Some(self.user_id.clone())
    }
}

/// `POST /users` body.
#[derive(Debug, Deserialize, Serialize)]
pub struct Register {
    /// Email address.
    pub email: String,
}

#[derive(Clone)]
struct App {
    store: SqlStore,
}

type ApiError = (StatusCode, String);

fn internal(e: impl std::fmt::Display) -> ApiError {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

async fn register(
    State(app): State<App>,
    Json(body): Json<Register>,
) -> Result<(StatusCode, Json<UserRegistered>), ApiError> {
    if !body.email.contains('@') {
        return Err((StatusCode::UNPROCESSABLE_ENTITY, format!("`{}` is not an email address", body.email)));
    }
    let email = body.email.clone();
    match create_user(&app.store, body.email).await {
        Ok(event) => Ok((StatusCode::CREATED, Json(event))),
        Err(e) if e.is_unique_violation() => Err((StatusCode::CONFLICT, format!("`{email}` is already registered"))),
        Err(e) if e.is_retryable() => Err((StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
        Err(e) => Err(internal(e)),
    }
}

/// The user row and its event commit together; the relay is notified after the commit.
async fn create_user(store: &SqlStore, email: String) -> Result<UserRegistered, WriteError> {
    let mut tx = store.begin().await?;
    let user = users::ActiveModel { id: Set(uuid::Uuid::now_v7().to_string()), email: Set(email) };
    let user = user.insert(&*tx).await?;
    let event = UserRegistered { user_id: user.id, email: user.email };
    tx.enqueue(&event)?;
    tx.commit().await?;
    Ok(event)
}

async fn status(State(app): State<App>) -> Result<Json<serde_json::Value>, ApiError> {
    let s = app.store.stats().await.map_err(internal)?;
    Ok(Json(serde_json::json!({
        "pending": s.pending,
        "claimed": s.claimed,
        "dead": s.dead,
        "oldest_pending_age_seconds": s.oldest_pending_age.map(|d| d.as_secs_f64()),
    })))
}

async fn connect(url: &str) -> outbox::Result<DatabaseConnection> {
    match url.strip_prefix("sqlite://") {
        Some(path) => connect_sqlite(path).await,
        None => sea_orm::Database::connect(url)
            .await
            .map_err(|e| outbox::Error::temporary("database", format!("cannot reach {url}: {e}"), None)),
    }
}

async fn bus(settings: &BusSettings) -> outbox::Result<Arc<dyn Bus>> {
    Ok(match settings {
        BusSettings::Nats { url, stream, prefix } => {
            let bus = outbox::nats::JetStreamBus::builder(outbox::nats::connect(url).await?)
                .subject_prefix(prefix)
                .build()?;
            outbox::nats::ensure_stream(bus.context(), &outbox::nats::StreamSpec::new(stream, [format!("{prefix}>")]))
                .await?;
            Arc::new(bus)
        }
        BusSettings::Redis { url, prefix } => Arc::new(
            outbox::redis::RedisStreamsBus::builder(outbox::redis::connect(url).await?)
                .stream_prefix(prefix)
                .dedup(outbox::redis::Dedup::Lua)
                .build()
                .await?,
        ),
    })
}

/// Creates the schema, starts the relay and returns the HTTP routes.
pub async fn start(settings: &Settings) -> outbox::Result<(Router, RelayHandle)> {
    let db = connect(&settings.database_url).await?;
    let mut users = Schema::new(db.get_database_backend()).create_table_from_entity(users::Entity);
    db.execute(users.if_not_exists()).await.map_err(WriteError::from)?;
    let config = SqlStoreConfig::default().table(settings.outbox_table.clone());
    migrate(&db, &config).await?;
    let notifier = Arc::new(ChannelNotifier::new(4096));
    let store = SqlStore::new(db, config)?.with_notifier(notifier.clone());
    let relay = Relay::builder(Arc::new(store.clone()), bus(&settings.bus).await?).notifier(notifier).build()?.spawn();
    let app = App { store };
    let routes = Router::new().route("/users", post(register)).route("/outbox/status", get(status)).with_state(app);
    Ok((routes, relay))
}
