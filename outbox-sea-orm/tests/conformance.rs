//! The shared store contract (`outbox_core::store_conformance!`) on every compiled backend.
#![cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]

mod common;

#[cfg(feature = "postgres")]
mod postgres {
    use std::sync::Arc;

    use outbox_core::{OutboxStore, Retention};

    use crate::common::{Backend, conformance_store};

    async fn setup(retention: Retention) -> Option<Arc<dyn OutboxStore>> {
        conformance_store(Backend::Postgres, retention).await
    }

    outbox_core::store_conformance!(setup);
}

#[cfg(feature = "mysql")]
mod mysql {
    use std::sync::Arc;

    use outbox_core::{OutboxStore, Retention};

    use crate::common::{Backend, conformance_store};

    async fn setup(retention: Retention) -> Option<Arc<dyn OutboxStore>> {
        conformance_store(Backend::MySql, retention).await
    }

    outbox_core::store_conformance!(setup);
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use std::sync::Arc;

    use outbox_core::{OutboxStore, Retention};

    use crate::common::{Backend, conformance_store};

    async fn setup(retention: Retention) -> Option<Arc<dyn OutboxStore>> {
        conformance_store(Backend::Sqlite, retention).await
    }

    outbox_core::store_conformance!(setup);
}
