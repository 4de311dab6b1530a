//! Reading outbox rows selected as [`MESSAGE_COLUMNS`](crate::schema::MESSAGE_COLUMNS), by
//! position: from SeaORM's rows, or straight from sqlx's on the held-claim hot path (SeaORM
//! builds an error string for every NULL it reads into an `Option`).

use outbox_core::{Error, Headers, MessageId, OutboxMessage, Result, UnixMillis};
#[cfg(feature = "postgres")]
use sea_orm::sqlx::{Column as _, Postgres, Row as _, postgres::PgRow, postgres::PgTypeInfo};
use sea_orm::{DbErr, QueryResult};
use uuid::Uuid;

use crate::store::SqlStore;

/// A decoded outbox row.
pub(crate) struct Row {
    pub(crate) seq: i64,
    pub(crate) finished_at: Option<UnixMillis>,
    pub(crate) message: OutboxMessage,
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
    pub(crate) fn decode(&self, row: &impl Columns) -> Result<Row> {
        let e = |err: DbErr| self.db_err(err);
        let id = row.uuid(1).map_err(e)?;
        let headers =
            row.with_text(5, |text| if text == "{}" { Ok(Headers::new()) } else { serde_json::from_str(text) });
        let headers: Headers = headers.map_err(e)?.map_err(|err| {
            Error::permanent(
                self.backend(),
                format!("message {id}: the headers column is not a JSON object of strings: {err}"),
                Some(Box::new(err) as outbox_core::BoxError),
            )
        })?;
        Ok(Row {
            seq: row.int(0).map_err(e)?,
            finished_at: row.maybe_int(9).map_err(e)?,
            message: OutboxMessage {
                id: MessageId(id),
                topic: row.text(2).map_err(e)?,
                key: row.maybe_text(3).map_err(e)?,
                payload: row.bytes(4).map_err(e)?,
                headers,
                created_at: row.int(6).map_err(e)?,
                attempts: u32::try_from(row.int4(7).map_err(e)?).unwrap_or(0),
                last_error: row.maybe_text(8).map_err(e)?,
            },
        })
    }
}
