//! `outbox dashboard`: the operator dashboard on its own, until SIGINT or SIGTERM.

use std::sync::Arc;

use crate::backends;
use crate::cli::DashboardArgs;
use crate::commands::relay::wait_for_signal;
use crate::dashboard::series::{self, PublishedRows, Series, Source};
use crate::dashboard::{self, Dashboard, Store};
use crate::settings::Common;

pub(crate) async fn run(common: &Common, args: &DashboardArgs) -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let sql = backends::store(common).await?;
    let rows = PublishedRows { db: sql.connection().clone(), table: common.table.clone() };
    let store: Store = sql;
    let series = Series::new(Source::Database);
    let token = args.token.clone().filter(|t| !t.is_empty());
    if token.is_none() {
        tracing::info!("no --token / OUTBOX_DASHBOARD_TOKEN: the dashboard is read-only");
    }
    // `dashboard::serve` warns about an address beyond loopback.
    let app = Dashboard::new(Arc::clone(&store), token, series.clone()).router();
    let server = dashboard::serve(args.addr, app).await?;
    tokio::select! {
        r = wait_for_signal(&mut term) => r?,
        () = series::sample(series, store, None, Some(rows)) => {}
    }
    server.abort();
    Ok(())
}
