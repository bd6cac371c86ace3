//! [`Tx`] over a pooled PostgreSQL transaction. Each text is prepared through the
//! connection's statement cache (`prepare_cached`: parsed once per connection); a [`Value`]
//! is bound as the type the server inferred for its parameter, and a column read by its
//! declared type (`BIGINT`, `INTEGER`, `BOOLEAN`, `TEXT`, `BYTEA`, ...; a `SUM` is cast to
//! `BIGINT` in the SQL).

use std::error::Error;
use std::sync::Arc;

use bytes::BytesMut;
use futures::future::BoxFuture;
use futures::TryStreamExt;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

use super::{Dialect, EachRow, Native, Row, Sql, Tx, Value};
use crate::store::postgres::Transaction;
use crate::store::StoreError;

/// A transaction on a pooled PostgreSQL connection.
pub struct PgTx<'t> {
    tx: &'t Transaction<'t>,
}

impl<'t> PgTx<'t> {
    pub fn new(tx: &'t Transaction<'t>) -> PgTx<'t> {
        PgTx { tx }
    }

    /// The transaction itself, for what only PostgreSQL has (leases, handoffs).
    pub fn transaction(&self) -> &'t Transaction<'t> {
        self.tx
    }
}

type BoxError = Box<dyn Error + Sync + Send>;

impl ToSql for Value<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        let refused = || -> BoxError { format!("{} cannot be bound as {ty}", self.kind()).into() };
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) => match *ty {
                Type::INT8 => v.to_sql(ty, out),
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::BOOL => (*v != 0).to_sql(ty, out),
                Type::FLOAT8 => (*v as f64).to_sql(ty, out),
                _ => Err(refused()),
            },
            Value::Bool(b) => match *ty {
                Type::BOOL => b.to_sql(ty, out),
                Type::INT8 | Type::INT4 | Type::INT2 => Value::Int(i64::from(*b)).to_sql(ty, out),
                _ => Err(refused()),
            },
            Value::Real(v) => match *ty {
                Type::FLOAT8 => v.to_sql(ty, out),
                Type::FLOAT4 => (*v as f32).to_sql(ty, out),
                _ => Err(refused()),
            },
            Value::Text(s) => match *ty {
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                    s.as_ref().to_sql(ty, out)
                }
                _ => Err(refused()),
            },
            Value::Blob(b) => match *ty {
                Type::BYTEA => b.as_ref().to_sql(ty, out),
                _ => Err(refused()),
            },
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn value_of(row: &tokio_postgres::Row, i: usize) -> Result<Value<'static>, StoreError> {
    let column = &row.columns()[i];
    let v = match *column.type_() {
        Type::INT8 => row.try_get::<_, Option<i64>>(i)?.map(Value::Int),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(i)?
            .map(|v| Value::Int(v.into())),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(i)?
            .map(|v| Value::Int(v.into())),
        Type::BOOL => row.try_get::<_, Option<bool>>(i)?.map(Value::Bool),
        Type::FLOAT8 => row.try_get::<_, Option<f64>>(i)?.map(Value::Real),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => row
            .try_get::<_, Option<String>>(i)?
            .map(|s| Value::Text(s.into())),
        Type::BYTEA => row
            .try_get::<_, Option<Vec<u8>>>(i)?
            .map(|b| Value::Blob(b.into())),
        ref other => {
            return Err(StoreError::Corrupt(format!(
                "column {}: type {other} has no value here (cast it in the SQL)",
                column.name()
            )))
        }
    };
    Ok(v.unwrap_or(Value::Null))
}

fn row_of(columns: &Arc<[String]>, row: &tokio_postgres::Row) -> Result<Row, StoreError> {
    let values = (0..row.len())
        .map(|i| value_of(row, i))
        .collect::<Result<_, _>>()?;
    Ok(Row::new(columns.clone(), values))
}

fn names(stmt: &tokio_postgres::Statement) -> Arc<[String]> {
    stmt.columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect()
}

fn refs<'v>(params: &'v [Value<'_>]) -> Vec<&'v (dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

impl Tx for PgTx<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn native(&mut self) -> Native<'_> {
        Native::Postgres(self.tx)
    }

    fn run<'a>(
        &'a mut self,
        sql: Sql<'a>,
        params: &'a [Value<'a>],
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let stmt = self.tx.prepare_cached(sql.postgres).await?;
            Ok(self.tx.execute(&stmt, &refs(params)).await?)
        })
    }

    fn rows<'a>(
        &'a mut self,
        sql: Sql<'a>,
        params: &'a [Value<'a>],
    ) -> BoxFuture<'a, Result<Vec<Row>, StoreError>> {
        Box::pin(async move {
            let stmt = self.tx.prepare_cached(sql.postgres).await?;
            let columns = names(&stmt);
            let rows = self.tx.query(&stmt, &refs(params)).await?;
            rows.iter().map(|r| row_of(&columns, r)).collect()
        })
    }

    fn stream<'a>(
        &'a mut self,
        sql: Sql<'a>,
        params: &'a [Value<'a>],
        each: EachRow<'a>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let stmt = self.tx.prepare_cached(sql.postgres).await?;
            let columns = names(&stmt);
            let rows = self.tx.query_raw(&stmt, refs(params)).await?;
            futures::pin_mut!(rows);
            while let Some(r) = rows.try_next().await? {
                each(row_of(&columns, &r)?)?;
            }
            Ok(())
        })
    }
}
