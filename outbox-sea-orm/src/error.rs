//! Maps SeaORM / sqlx errors into the classified [`outbox_core::Error`]: retry logic branches
//! on [`Error::is_temporary`], never on strings.

use outbox_core::Error;
use sea_orm::{DbBackend, DbErr, RuntimeErr};

/// What kind of failure a [`DbErr`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// The outbox table does not exist.
    #[cfg_attr(not(any(feature = "postgres", feature = "mysql", feature = "sqlite")), allow(dead_code))]
    MissingTable,
    /// Connection lost, pool exhausted, timeout, lock conflict: trying again may work.
    Temporary,
    /// Everything else (bad SQL, constraint violation, decoding).
    Permanent,
}

/// The name an error carries for `backend`.
pub(crate) fn backend_name(backend: DbBackend) -> &'static str {
    match backend {
        DbBackend::Postgres => "postgres",
        DbBackend::MySql => "mysql",
        DbBackend::Sqlite => "sqlite",
        #[allow(unreachable_patterns)]
        _ => "sql",
    }
}

/// Converts `err`, raised by a statement on `table`, into an outbox error: connection, pool
/// and timeout errors are temporary; a missing table is [`Error::MissingSchema`]; the rest
/// is permanent.
///
/// Useful for mapping errors of your own SeaORM calls the same way the store does.
pub fn from_db_err(backend: DbBackend, table: &str, err: DbErr) -> Error {
    let name = backend_name(backend);
    match classify(&err) {
        Class::MissingTable => Error::MissingSchema { backend: name, table: table.to_owned() },
        Class::Temporary => Error::temporary(name, err.to_string(), Some(Box::new(err) as _)),
        Class::Permanent => Error::permanent(name, err.to_string(), Some(Box::new(err) as _)),
    }
}

/// A sqlx error as SeaORM reports it, for statements run on the pool's connections directly.
#[cfg(feature = "postgres")]
pub(crate) fn from_sqlx(err: sea_orm::sqlx::Error) -> DbErr {
    DbErr::Query(sea_orm::RuntimeErr::SqlxError(err.into()))
}

fn classify(err: &DbErr) -> Class {
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) | DbErr::MutexPoisonError => Class::Temporary,
        DbErr::Exec(e) | DbErr::Query(e) => classify_runtime(e),
        _ => Class::Permanent,
    }
}

fn classify_runtime(err: &RuntimeErr) -> Class {
    match err {
        #[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
        RuntimeErr::SqlxError(e) => classify_sqlx(e),
        // SeaORM's own runtime errors are about the connection ("Disconnected" and the like).
        RuntimeErr::Internal(_) => Class::Temporary,
        #[allow(unreachable_patterns)]
        _ => Class::Permanent,
    }
}

#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
fn classify_sqlx(err: &sea_orm::sqlx::Error) -> Class {
    use sea_orm::sqlx::Error as E;
    match err {
        E::Io(_) | E::Tls(_) | E::Protocol(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed => Class::Temporary,
        E::Database(db) => classify_database(db.as_ref()),
        _ => Class::Permanent,
    }
}

#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
fn classify_database(db: &dyn sea_orm::sqlx::error::DatabaseError) -> Class {
    #[cfg(feature = "mysql")]
    if let Some(my) = db.try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>() {
        return match my.number() {
            // ER_NO_SUCH_TABLE
            1146 => Class::MissingTable,
            // lock wait timeout, deadlock, too many connections, shutdown, killed,
            // statement timeouts (MariaDB, MySQL)
            1205 | 1213 | 1040 | 1053 | 1927 | 1969 | 3024 => Class::Temporary,
            _ if my.code().is_some_and(|s| s.starts_with("08")) => Class::Temporary,
            _ => Class::Permanent,
        };
    }
    #[cfg(feature = "sqlite")]
    if db.try_downcast_ref::<sea_orm::sqlx::sqlite::SqliteError>().is_some() {
        // `code` is the extended result code; its low byte is the primary code.
        let primary = db.code().and_then(|c| c.parse::<i32>().ok()).map(|c| c & 0xff);
        return match primary {
            // SQLITE_BUSY, SQLITE_LOCKED
            Some(5 | 6) => Class::Temporary,
            _ if db.message().starts_with("no such table") => Class::MissingTable,
            _ => Class::Permanent,
        };
    }
    // Postgres SQLSTATEs.
    match db.code().as_deref() {
        Some("42P01") => Class::MissingTable,
        // connection exception, serialization failure, deadlock, insufficient resources,
        // lock not available, query canceled (statement timeout), shutdown / not yet up
        Some(c)
            if c.starts_with("08")
                || c.starts_with("53")
                || matches!(c, "40001" | "40P01" | "55P03" | "57014" | "57P01" | "57P02" | "57P03") =>
        {
            Class::Temporary
        }
        _ => Class::Permanent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::ConnAcquireErr;

    #[test]
    fn connection_errors_are_temporary() {
        let e = from_db_err(DbBackend::Postgres, "t", DbErr::ConnectionAcquire(ConnAcquireErr::Timeout));
        assert!(e.is_temporary(), "{e}");
        let e = from_db_err(DbBackend::MySql, "t", DbErr::Conn(RuntimeErr::Internal("Disconnected".into())));
        assert!(e.is_temporary(), "{e}");
    }

    #[test]
    fn other_errors_are_permanent() {
        let e = from_db_err(DbBackend::Sqlite, "t", DbErr::Type("bad column".into()));
        assert!(!e.is_temporary());
        assert!(e.to_string().starts_with("sqlite: "), "{e}");
    }
}
