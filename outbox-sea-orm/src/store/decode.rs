//! Reading outbox rows selected as [`MESSAGE_COLUMNS`](crate::schema::MESSAGE_COLUMNS), by
//! position: from SeaORM's rows, or straight from sqlx's on the held-claim hot path (SeaORM
//! builds an error string for every NULL it reads into an `Option`).

use outbox_core::{Headers, MessageId, OutboxMessage, Result, UnixMillis};
#[cfg(feature = "postgres")]
use sea_orm::sqlx::{Column as _, Postgres, Row as _, postgres::PgRow, postgres::PgTypeInfo};
use sea_orm::{DbErr, QueryResult};
use uuid::Uuid;

use super::SqlStore;
use crate::sql::Dialect;

/// A decoded outbox row.
pub(crate) struct Row {
    pub(crate) seq: i64,
    pub(crate) finished_at: Option<UnixMillis>,
    pub(crate) message: OutboxMessage,
}

/// The names of [`MESSAGE_COLUMNS`](crate::schema::MESSAGE_COLUMNS), by position.
const COLUMN_NAMES: [&str; 10] =
    ["seq", "id", "topic", "msg_key", "payload", "headers", "created_at", "attempts", "last_error", "finished_at"];

/// A row as read, and what kept it from being read fully.
pub(crate) struct Decoded {
    row: Row,
    flaw: Option<Flaw>,
}

/// Why a row could not be read as a message (the first reason found).
enum Flaw {
    /// Every row fails alike: a column of another type than the relay reads.
    Table(DbErr),
    /// This row only: headers that are not a JSON object of strings, or (SQLite) a value of
    /// another type. Claimed, the row is dead-lettered with this as its `last_error`.
    Row(String),
}

/// A claimed row that cannot be published: it is dead-lettered with `reason`.
#[derive(Debug)]
pub(crate) struct Unreadable {
    pub(crate) seq: i64,
    pub(crate) id: MessageId,
    pub(crate) reason: String,
}

impl Unreadable {
    pub(crate) fn log(&self) {
        tracing::warn!(seq = self.seq, id = %self.id, reason = %self.reason, "dead-lettered a row the relay cannot read");
    }
}

/// Typed reads of a row's columns by position.
pub(crate) trait Columns {
    fn int(&self, i: usize) -> Result<i64, DbErr>;
    fn maybe_int(&self, i: usize) -> Result<Option<i64>, DbErr>;
    fn int4(&self, i: usize) -> Result<i32, DbErr>;
    fn text(&self, i: usize) -> Result<String, DbErr>;
    fn maybe_text(&self, i: usize) -> Result<Option<String>, DbErr>;
    fn bytes(&self, i: usize) -> Result<Vec<u8>, DbErr>;
    fn uuid(&self, i: usize) -> Result<Uuid, DbErr>;
    /// Reads a text column without keeping it (no allocation where the row type allows).
    fn with_text<R>(&self, i: usize, read: impl FnOnce(&str) -> R) -> Result<R, DbErr> {
        self.text(i).map(|text| read(&text))
    }
}

/// Implements [`Columns`] with one generic getter of the row type.
macro_rules! columns_by {
    ($get:ident) => {
        fn int(&self, i: usize) -> Result<i64, DbErr> {
            $get(self, i)
        }
        fn maybe_int(&self, i: usize) -> Result<Option<i64>, DbErr> {
            $get(self, i)
        }
        fn int4(&self, i: usize) -> Result<i32, DbErr> {
            $get(self, i)
        }
        fn text(&self, i: usize) -> Result<String, DbErr> {
            $get(self, i)
        }
        fn maybe_text(&self, i: usize) -> Result<Option<String>, DbErr> {
            $get(self, i)
        }
        fn bytes(&self, i: usize) -> Result<Vec<u8>, DbErr> {
            $get(self, i)
        }
        fn uuid(&self, i: usize) -> Result<Uuid, DbErr> {
            $get(self, i)
        }
    };
}

impl Columns for QueryResult {
    columns_by!(sea_orm_get);
}

fn sea_orm_get<T: sea_orm::TryGetable>(row: &QueryResult, i: usize) -> Result<T, DbErr> {
    row.try_get_by_index(i)
}

/// Rows of a sqlx result whose column types were checked once, by [`checked`]: `try_get`
/// checks the type of every value of every row, a quarter of the decoding time at 1,000 rows.
#[cfg(feature = "postgres")]
pub(crate) struct Checked<'a>(&'a PgRow);

#[cfg(feature = "postgres")]
impl Columns for Checked<'_> {
    columns_by!(sqlx_get);

    fn with_text<R>(&self, i: usize, read: impl FnOnce(&str) -> R) -> Result<R, DbErr> {
        sqlx_get::<&str>(self, i).map(read)
    }
}

#[cfg(feature = "postgres")]
impl Checked<'_> {
    pub(crate) fn tid(&self, i: usize) -> Result<crate::sql::Tid, DbErr> {
        sqlx_get(self, i)
    }
}

#[cfg(feature = "postgres")]
fn sqlx_get<'r, T>(row: &Checked<'r>, i: usize) -> Result<T, DbErr>
where
    T: sea_orm::sqlx::Decode<'r, Postgres> + sea_orm::sqlx::Type<Postgres>,
{
    row.0.try_get_unchecked(i).map_err(crate::error::from_sqlx)
}

/// A column's position and whether a type fits it.
#[cfg(feature = "postgres")]
pub(crate) type ColumnCheck = (usize, fn(&PgTypeInfo) -> bool);

/// Checks that `rows` (all of one result) have the column types [`SqlStore::decode`] reads,
/// plus `extra` columns after them, and hands them out for reading.
#[cfg(feature = "postgres")]
pub(crate) fn checked<'a>(
    rows: &'a [PgRow],
    extra: &[ColumnCheck],
) -> Result<impl Iterator<Item = Checked<'a>>, DbErr> {
    fn is<T: sea_orm::sqlx::Type<Postgres>>(ty: &PgTypeInfo) -> bool {
        T::compatible(ty)
    }
    let message: [ColumnCheck; 10] = [
        (0, is::<i64>),
        (1, is::<Uuid>),
        (2, is::<String>),
        (3, is::<String>),
        (4, is::<Vec<u8>>),
        (5, is::<String>),
        (6, is::<i64>),
        (7, is::<i32>),
        (8, is::<String>),
        (9, is::<i64>),
    ];
    if let Some(first) = rows.first() {
        let columns = first.columns();
        for &(i, fits) in message.iter().chain(extra) {
            let column = columns.get(i).ok_or_else(|| DbErr::Type(format!("the claim returned no column {i}")))?;
            if !fits(column.type_info()) {
                let (name, ty) = (column.name(), column.type_info());
                return Err(DbErr::Type(format!("outbox column `{name}` has type {ty}, which the relay cannot read")));
            }
        }
    }
    Ok(rows.iter().map(Checked))
}

impl SqlStore {
    /// Decodes a row whose first columns are [`MESSAGE_COLUMNS`](crate::schema::MESSAGE_COLUMNS).
    /// A value it cannot read is left at its default and reported as the row's [`Flaw`].
    pub(crate) fn decode(&self, row: &impl Columns) -> Decoded {
        let mut flaw = None;
        let seq = match row.int(0) {
            Ok(seq) => seq,
            // Without its `seq` the row cannot even be dead-lettered.
            Err(err) => {
                flaw = Some(Flaw::Table(err));
                0
            }
        };
        let f = &mut flaw;
        let id = self.read(f, 1, row.uuid(1));
        let topic = self.read(f, 2, row.text(2));
        let key = self.read(f, 3, row.maybe_text(3));
        let payload = self.read(f, 4, row.bytes(4));
        let headers = self.read(f, 5, row.with_text(5, parse_headers).map(Some)).unwrap_or(Ok(Headers::new()));
        let created_at = self.read(f, 6, row.int(6));
        let attempts = self.read(f, 7, row.int4(7));
        let last_error = self.read(f, 8, row.maybe_text(8));
        let finished_at = self.read(f, 9, row.maybe_int(9));
        let headers = headers.unwrap_or_else(|err| {
            flaw.get_or_insert(Flaw::Row(format!("the headers column is not a JSON object of strings: {err}")));
            Headers::new()
        });
        let message = OutboxMessage {
            id: MessageId(id),
            topic,
            key,
            payload,
            headers,
            created_at,
            attempts: u32::try_from(attempts).unwrap_or(0),
            last_error,
        };
        Decoded { row: Row { seq, finished_at, message }, flaw }
    }

    /// `value` of column `i`, or its default with the first flaw recorded. A column of another
    /// type fails every row alike on Postgres and MySQL, so that is the table's flaw; SQLite
    /// lets any column hold any type, so there it is the row's.
    fn read<T: Default>(&self, flaw: &mut Option<Flaw>, i: usize, value: Result<T, DbErr>) -> T {
        value.unwrap_or_else(|err| {
            flaw.get_or_insert_with(|| match self.dialect {
                Dialect::Sqlite => Flaw::Row(format!("column `{}` cannot be read: {err}", COLUMN_NAMES[i])),
                Dialect::Postgres | Dialect::MySql => Flaw::Table(err),
            });
            T::default()
        })
    }

    /// A claimed row to publish, or to dead-letter when only it is flawed; an error when the
    /// table is.
    pub(crate) fn claimed(&self, decoded: Decoded) -> Result<Result<Row, Unreadable>> {
        let Decoded { row, flaw } = decoded;
        match flaw {
            None => Ok(Ok(row)),
            Some(Flaw::Table(err)) => Err(self.db_err(err)),
            Some(Flaw::Row(reason)) => Ok(Err(Unreadable {
                seq: row.seq,
                id: row.message.id,
                reason: format!("the relay cannot read this row: {reason}"),
            })),
        }
    }

    /// A row to list (a dead letter): a flawed row is shown with defaults where it could
    /// not be read (its `last_error` says why); an error when the table is flawed.
    pub(crate) fn listed(&self, decoded: Decoded) -> Result<Row> {
        match decoded.flaw {
            Some(Flaw::Table(err)) => Err(self.db_err(err)),
            None | Some(Flaw::Row(_)) => Ok(decoded.row),
        }
    }
}

fn parse_headers(text: &str) -> Result<Headers, serde_json::Error> {
    if text == "{}" { Ok(Headers::new()) } else { serde_json::from_str(text) }
}
