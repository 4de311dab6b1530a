//! The shared store contract (`outbox_core::store_conformance!`) on every compiled backend.
#![cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]

mod common;

/// Postgres claims in held transactions (the default there).
#[cfg(feature = "postgres")]
mod postgres {
    use std::sync::Arc;

    use outbox_core::{OutboxAdmin, Retention};
    use outbox_sea_orm::ClaimMode;

    use crate::common::{Backend, conformance_store};

    async fn setup(retention: Retention) -> Option<Arc<dyn OutboxAdmin>> {
        conformance_store(Backend::Postgres, retention, ClaimMode::Transaction).await
    }

    outbox_core::store_conformance!(setup);
}

/// Postgres claims with leases written on the rows.
#[cfg(feature = "postgres")]
mod postgres_lease {
    use std::sync::Arc;

    use outbox_core::{OutboxAdmin, Retention};
    use outbox_sea_orm::ClaimMode;

    use crate::common::{Backend, conformance_store};

    async fn setup(retention: Retention) -> Option<Arc<dyn OutboxAdmin>> {
        conformance_store(Backend::Postgres, retention, ClaimMode::Lease).await
    }

    outbox_core::store_conformance!(setup);
}

#[cfg(feature = "mysql")]
mod mysql {
    use std::sync::Arc;

    use outbox_core::{OutboxAdmin, Retention};
    use outbox_sea_orm::ClaimMode;

    use crate::common::{Backend, conformance_store};

    async fn setup(retention: Retention) -> Option<Arc<dyn OutboxAdmin>> {
        conformance_store(Backend::MySql, retention, ClaimMode::Auto).await
    }

    outbox_core::store_conformance!(setup);
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use std::sync::Arc;

    use outbox_core::{OutboxAdmin, Retention};
    use outbox_sea_orm::ClaimMode;

    use crate::common::{Backend, conformance_store};

    async fn setup(retention: Retention) -> Option<Arc<dyn OutboxAdmin>> {
        conformance_store(Backend::Sqlite, retention, ClaimMode::Auto).await
    }

    outbox_core::store_conformance!(setup);
}
