//! `cargo run -p auth-service` with `NATS_URL` or `REDIS_URL` set (and optionally
//! `DATABASE_URL`, `LISTEN_ADDR`). Ctrl-C or SIGTERM stops it after draining in-flight work.

use auth_service::{Settings, start};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new("info")).init();
    let settings = Settings::from_env()?;
    let (routes, relay) = start(&settings).await?;
    let addr = std::env::var("LISTEN_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    tracing::info!(%addr, "auth service listening");
    axum::serve(listener, routes).with_graceful_shutdown(shutdown_signal()).await?;
    relay.shutdown().await?; // drain in-flight batches
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
