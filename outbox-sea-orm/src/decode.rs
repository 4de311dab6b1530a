//! Reading outbox rows selected as [`MESSAGE_COLUMNS`](crate::schema::MESSAGE_COLUMNS), by
//! position: from SeaORM's rows, or straight from sqlx's on the held-claim hot path (SeaORM
//! builds an error string for every NULL it reads into an `Option`).

use outbox_core::{Error, Headers, MessageId, OutboxMessage, Result, UnixMillis};
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

#[cfg(feature = "postgres")]
impl Columns for sea_orm::sqlx::postgres::PgRow {
    columns_by!(sqlx_get);
}

#[cfg(feature = "postgres")]
fn sqlx_get<T>(row: &sea_orm::sqlx::postgres::PgRow, i: usize) -> Result<T, DbErr>
where
    T: for<'r> sea_orm::sqlx::Decode<'r, sea_orm::sqlx::Postgres> + sea_orm::sqlx::Type<sea_orm::sqlx::Postgres>,
{
    use sea_orm::sqlx::Row as _;
    row.try_get(i).map_err(crate::error::from_sqlx)
}

impl SqlStore {
    /// Decodes a row whose first columns are [`MESSAGE_COLUMNS`](crate::schema::MESSAGE_COLUMNS).
    pub(crate) fn decode(&self, row: &impl Columns) -> Result<Row> {
        let e = |err: DbErr| self.db_err(err);
        let id = row.uuid(1).map_err(e)?;
        let headers = row.text(5).map_err(e)?;
        let headers: Headers = if headers == "{}" {
            Headers::new()
        } else {
            serde_json::from_str(&headers).map_err(|err| {
                Error::permanent(
                    self.backend(),
                    format!("message {id}: the headers column is not a JSON object of strings: {err}"),
                    Some(Box::new(err) as outbox_core::BoxError),
                )
            })?
        };
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
