//! Errors of the SQL store.
//!
//! - [`from_db_err`] maps SeaORM / sqlx errors of the store's own statements into the
//!   classified [`outbox_core::Error`]: retry logic branches on [`Error::is_temporary`], never
//!   on strings.
//! - [`WriteError`] is the error of the write path ([`SqlStore::begin`](crate::SqlStore::begin),
//!   [`SqlStore::transaction`](crate::SqlStore::transaction)): your statements' [`DbErr`] stays
//!   a [`DbErr`], so a unique violation of your table is
//!   [`is_unique_violation`](WriteError::is_unique_violation), not an outbox failure.

use outbox_core::Error;
use sea_orm::{DbBackend, DbErr, RuntimeErr, SqlErr};

/// What kind of failure a [`DbErr`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class<'a> {
    /// A table does not exist; the name as the database reports it, when it says.
    #[cfg_attr(not(any(feature = "postgres", feature = "mysql", feature = "sqlite")), allow(dead_code))]
    MissingTable(Option<&'a str>),
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

/// Converts `err`, raised by a statement on the outbox table `table`, into an outbox error:
/// connection, pool and timeout errors, deadlocks and serialization failures are temporary;
/// a missing `table` is [`Error::MissingSchema`]; the rest (a missing table of another name
/// included) is permanent.
///
/// For errors of your own statements in a write transaction, use [`WriteError`] instead: it
/// keeps the [`DbErr`].
pub fn from_db_err(backend: DbBackend, table: &str, err: DbErr) -> Error {
    let name = backend_name(backend);
    match classify(&err) {
        Class::MissingTable(Some(missing)) if missing.eq_ignore_ascii_case(table) => {
            Error::MissingSchema { backend: name, table: table.to_owned() }
        }
        Class::Temporary => Error::temporary(name, err.to_string(), Some(Box::new(err) as _)),
        Class::MissingTable(_) | Class::Permanent => Error::permanent(name, err.to_string(), Some(Box::new(err) as _)),
    }
}

/// The error of a write transaction ([`SqlStore::begin`](crate::SqlStore::begin),
/// [`SqlStore::transaction`](crate::SqlStore::transaction)): a failure of the database
/// around your rows, or of the outbox.
///
/// Your own statements' errors convert with `?` (`From<DbErr>`) and stay a [`DbErr`], the
/// error's [`source`](std::error::Error::source): a duplicate in a unique column of your
/// table is [`is_unique_violation`](Self::is_unique_violation) (answer 409, not 500), a
/// serialization failure or deadlock is [`is_retryable`](Self::is_retryable), and neither is
/// mistaken for an outbox failure.
///
/// ```
/// use outbox_sea_orm::WriteError;
/// use sea_orm::{DbErr, RuntimeErr};
///
/// let lost = WriteError::from(DbErr::Conn(RuntimeErr::Internal("Disconnected".into())));
/// assert!(lost.is_retryable());
/// assert!(!lost.is_unique_violation());
/// assert!(matches!(lost, WriteError::Database(_)));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// A statement of yours, or the transaction's `BEGIN` or `COMMIT`, failed; or the
    /// database failed the transaction (a conflict with another one, a lost connection) while
    /// it inserted the outbox rows.
    #[error("{0}")]
    Database(#[from] DbErr),
    /// The outbox's part failed: a message that is invalid or cannot be encoded
    /// ([`Error::InvalidMessage`], [`Error::Encode`]), a missing outbox table
    /// ([`Error::MissingSchema`]), or the insert of the outbox rows.
    #[error(transparent)]
    Outbox(#[from] Error),
}

impl WriteError {
    /// Whether one of your statements (or the commit) broke a unique constraint, e.g. a
    /// registration with an email that is already taken. Never true for the outbox's rows.
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, Self::Database(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))))
    }

    /// Whether running the whole transaction again may succeed: a serialization failure, a
    /// deadlock, a lock timeout, SQLite's busy database, a lost connection or an exhausted
    /// pool. (A connection lost during `COMMIT` leaves the commit's outcome unknown; retry
    /// only work that may run twice.)
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Database(e) => classify(e) == Class::Temporary,
            Self::Outbox(e) => e.is_temporary(),
        }
    }

    /// An error of the outbox `INSERT` at commit: a conflict with another transaction or a
    /// lost connection is the transaction's failure, whichever statement hit it, so it stays
    /// a [`DbErr`]; the rest (a missing outbox table, a message id stored twice) is the outbox's.
    pub(crate) fn from_enqueue(err: Error) -> Self {
        match err {
            Error::Backend { backend, message, temporary: true, source: Some(source), .. } => {
                match source.downcast::<DbErr>() {
                    Ok(db) => Self::Database(*db),
                    Err(source) => Self::Outbox(Error::temporary(backend, message, Some(source))),
                }
            }
            other => Self::Outbox(other),
        }
    }
}

/// For callers whose error type is the outbox's: a database error keeps its classification
/// (temporary or permanent) and its [`DbErr`] as the source.
impl From<WriteError> for Error {
    fn from(err: WriteError) -> Self {
        match err {
            WriteError::Outbox(e) => e,
            WriteError::Database(e) => {
                let temporary = classify(&e) == Class::Temporary;
                let message = e.to_string();
                let source = Some(Box::new(e) as outbox_core::BoxError);
                if temporary {
                    Error::temporary("database", message, source)
                } else {
                    Error::permanent("database", message, source)
                }
            }
        }
    }
}

/// A sqlx error as SeaORM reports it, for statements run on the pool's connections directly.
#[cfg(feature = "postgres")]
pub(crate) fn from_sqlx(err: sea_orm::sqlx::Error) -> DbErr {
    DbErr::Query(sea_orm::RuntimeErr::SqlxError(err.into()))
}

fn classify(err: &DbErr) -> Class<'_> {
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) | DbErr::MutexPoisonError => Class::Temporary,
        DbErr::Exec(e) | DbErr::Query(e) => classify_runtime(e),
        _ => Class::Permanent,
    }
}

fn classify_runtime(err: &RuntimeErr) -> Class<'_> {
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
fn classify_sqlx(err: &sea_orm::sqlx::Error) -> Class<'_> {
    use sea_orm::sqlx::Error as E;
    match err {
        E::Io(_) | E::Tls(_) | E::Protocol(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed => Class::Temporary,
        E::Database(db) => classify_database(db.as_ref()),
        _ => Class::Permanent,
    }
}

#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
fn classify_database(db: &dyn sea_orm::sqlx::error::DatabaseError) -> Class<'_> {
    #[cfg(feature = "mysql")]
    if let Some(my) = db.try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>() {
        return match my.number() {
            // ER_NO_SUCH_TABLE: "Table 'db.name' doesn't exist"
            1146 => Class::MissingTable(quoted(db.message(), '\'').map(unqualified)),
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
            _ => match db.message().strip_prefix("no such table: ") {
                Some(name) => Class::MissingTable(Some(unqualified(name))),
                None => Class::Permanent,
            },
        };
    }
    // Postgres SQLSTATEs.
    match db.code().as_deref() {
        // undefined_table: `relation "name" does not exist`
        Some("42P01") => Class::MissingTable(quoted(db.message(), '"').map(unqualified)),
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

/// The text between the first two `quote`s of `message`.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
fn quoted(message: &str, quote: char) -> Option<&str> {
    let (_, rest) = message.split_once(quote)?;
    rest.split_once(quote).map(|(inside, _)| inside)
}

/// `name` without its schema or database (`main.t`, `db.t`).
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
fn unqualified(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
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

    #[test]
    fn missing_table_names_are_read_without_their_schema() {
        assert_eq!(quoted(r#"relation "public.users" does not exist"#, '"').map(unqualified), Some("users"));
        assert_eq!(quoted("Table 'test.users' doesn't exist", '\'').map(unqualified), Some("users"));
        assert_eq!(quoted("no quotes", '"'), None);
    }

    #[test]
    fn write_errors_convert_to_outbox_errors_keeping_their_class() {
        let lost = Error::from(WriteError::from(DbErr::Conn(RuntimeErr::Internal("Disconnected".into()))));
        assert!(lost.is_temporary(), "{lost}");
        let bad = Error::from(WriteError::from(DbErr::Type("bad column".into())));
        assert!(!bad.is_temporary() && std::error::Error::source(&bad).is_some(), "{bad:?}");
        let invalid = Error::from(WriteError::from(Error::config("f", "r")));
        assert!(matches!(invalid, Error::Config { field: "f", .. }));
    }

    #[test]
    fn temporary_enqueue_failures_are_the_transactions() {
        let conflict = from_db_err(DbBackend::Postgres, "t", DbErr::Conn(RuntimeErr::Internal("Disconnected".into())));
        assert!(matches!(WriteError::from_enqueue(conflict), WriteError::Database(DbErr::Conn(_))));
        let outbox = WriteError::from_enqueue(Error::MissingSchema { backend: "postgres", table: "t".into() });
        assert!(matches!(outbox, WriteError::Outbox(Error::MissingSchema { .. })) && !outbox.is_retryable());
    }
}
