//! Error classification against real servers: a missing table, and a database that is down.
#![cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]

mod common;

use std::time::Duration;

use common::{Backend, connect, unique_table};
use outbox_core::{Error, Lease, NewMessage, OutboxStore};
use outbox_sea_orm::{SqlStore, SqlStoreConfig};

async fn missing_table_is_missing_schema(backend: Backend) {
    let Some(db) = connect(backend).await else { return };
    let table = unique_table();
    let store = SqlStore::new(db, SqlStoreConfig::default().table(table.clone())).unwrap();

    let errors = [
        store.stats().await.unwrap_err(),
        store.enqueue(vec![NewMessage::new("errors.missing", "x")]).await.unwrap_err(),
        store.claim_due(10, Duration::ZERO, &Lease::new(Duration::from_secs(30))).await.unwrap_err(),
    ];
    for err in errors {
        assert!(matches!(&err, Error::MissingSchema { table: t, .. } if *t == table), "{err:?}");
        assert!(err.to_string().contains("run the outbox migration"), "{err}");
        assert!(!err.is_temporary());
    }
}

/// A port nothing listens on.
#[cfg(any(feature = "postgres", feature = "mysql"))]
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A pool to a closed port: every operation fails with a temporary error.
#[cfg(any(feature = "postgres", feature = "mysql"))]
async fn unreachable_database_is_temporary(backend: sea_orm::DbBackend, url: String) {
    let mut options = sea_orm::ConnectOptions::new(url.clone());
    options.connect_lazy(true).acquire_timeout(Duration::from_millis(500)).sqlx_logging(false);
    let db = sea_orm::Database::connect(options).await.expect("a lazy pool connects on first use");
    let store = SqlStore::new(db, SqlStoreConfig::default()).unwrap();
    let errors = [
        store.stats().await.unwrap_err(),
        store.enqueue(vec![NewMessage::new("errors.down", "x")]).await.unwrap_err(),
        store.claim_due(10, Duration::ZERO, &Lease::new(Duration::from_secs(30))).await.unwrap_err(),
    ];
    for err in errors {
        assert!(err.is_temporary(), "{err:?}");
    }

    let mut eager = sea_orm::ConnectOptions::new(url);
    eager.acquire_timeout(Duration::from_millis(500)).sqlx_logging(false);
    let err = sea_orm::Database::connect(eager).await.unwrap_err();
    let mapped = outbox_sea_orm::error::from_db_err(backend, "outbox_messages", err);
    assert!(mapped.is_temporary(), "{mapped:?}");
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;

    #[tokio::test]
    async fn missing_table_is_reported_as_missing_schema() {
        missing_table_is_missing_schema(Backend::Postgres).await;
    }

    #[tokio::test]
    async fn unreachable_server_errors_are_temporary() {
        unreachable_database_is_temporary(
            sea_orm::DbBackend::Postgres,
            format!("postgres://postgres@127.0.0.1:{}/test", closed_port()),
        )
        .await;
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    use super::*;

    #[tokio::test]
    async fn missing_table_is_reported_as_missing_schema() {
        missing_table_is_missing_schema(Backend::MySql).await;
    }

    #[tokio::test]
    async fn unreachable_server_errors_are_temporary() {
        unreachable_database_is_temporary(
            sea_orm::DbBackend::MySql,
            format!("mysql://root@127.0.0.1:{}/test", closed_port()),
        )
        .await;
    }
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;

    #[tokio::test]
    async fn missing_table_is_reported_as_missing_schema() {
        missing_table_is_missing_schema(Backend::Sqlite).await;
    }
}
