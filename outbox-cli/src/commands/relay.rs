//! `outbox relay`: listener + fallback until SIGINT/SIGTERM, then drain and exit 0.

use std::sync::Arc;

use anyhow::Context;
use outbox::{NoopNotifier, Notifier, OutboxAdmin, OutboxStore, Relay};
use sea_orm::DbBackend;

use crate::backends::{self, redact};
use crate::cli::{BusKind, NotifierKind};
use crate::dashboard::series::{self, Series, Source};
use crate::dashboard::{self, Dashboard};
use crate::health;
use crate::settings::{Common, RelaySettings};

pub(crate) async fn run(common: &Common, s: RelaySettings) -> anyhow::Result<()> {
    // Listen first: a SIGTERM during start-up then still means a clean exit.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let db = backends::connect_db(common).await?;
    let postgres = db.get_database_backend() == DbBackend::Postgres;
    let notifier_kind = s.notifier.unwrap_or(if postgres { NotifierKind::Postgres } else { NotifierKind::None });
    if notifier_kind == NotifierKind::Postgres && !postgres {
        anyhow::bail!("--notifier postgres needs a postgres:// DATABASE_URL");
    }
    let admin: Arc<dyn OutboxAdmin> = Arc::new(outbox::sea_orm::SqlStore::new(db.clone(), s.store.clone())?);
    let store: Arc<dyn OutboxStore> = admin.clone();

    let (bus, broker_check) = match s.bus {
        BusKind::Nats => backends::nats_bus(&s).await?,
        BusKind::Redis => backends::redis_bus(&s).await?,
        BusKind::Kafka => backends::kafka_bus(&s).await?,
    };
    let notifier: Arc<dyn Notifier> = match notifier_kind {
        NotifierKind::Postgres => Arc::new(outbox::sea_orm::PgNotifier::new(&db, common.table.clone())?),
        NotifierKind::Nats => backends::nats_notifier(&s).await?,
        NotifierKind::Redis => backends::redis_notifier(&s).await?,
        NotifierKind::None => Arc::new(NoopNotifier),
    };

    if let Some(addr) = s.metrics_addr {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        tracing::info!(%addr, "serving Prometheus metrics");
    }
    let relay = Relay::builder(store.clone(), bus).notifier(notifier).config(s.relay.clone()).build()?;
    let handle = relay.spawn();
    let health_task = match s.health_addr {
        Some(addr) => Some(health::serve(addr, store.clone(), broker_check, handle.health_probe()).await?),
        None => None,
    };
    let dashboard = match s.dashboard_addr {
        Some(addr) => {
            let series = Series::new(Source::Relay);
            let app = Dashboard::new(admin.clone(), s.dashboard_token.clone(), series.clone()).router();
            Some((dashboard::serve(addr, app).await?, series))
        }
        None => None,
    };
    tracing::info!(
        database = %redact(common.database_url.as_deref().unwrap_or_default()),
        bus = ?s.bus,
        notifier = ?notifier_kind,
        "relay running; SIGINT or SIGTERM stops it"
    );
    match &dashboard {
        // The chart samples the relay's own counter, which lives as long as the handle.
        Some((_, samples)) => tokio::select! {
            r = wait_for_signal(&mut term) => r?,
            () = series::sample(samples.clone(), admin.clone(), Some(handle.stats()), None) => {}
        },
        None => wait_for_signal(&mut term).await?,
    }
    tracing::info!("shutting down: draining in-flight batches");
    handle.shutdown().await?;
    if let Some(task) = health_task {
        task.abort();
    }
    if let Some((task, _)) = dashboard {
        task.abort();
    }
    Ok(())
}

pub(crate) async fn wait_for_signal(term: &mut tokio::signal::unix::Signal) -> anyhow::Result<()> {
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot listen for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}
