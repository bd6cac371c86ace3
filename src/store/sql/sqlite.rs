//! [`Tx`] over a rusqlite connection (inside the writer's transaction, or a read connection).
//!
//! SQLite reads `$1` as a named parameter whose index is the order of first appearance, so
//! each parameter is bound by the number in its name: `$2` gets `params[1]` wherever it
//! stands, and a statement naming `$1` twice binds it once. The texts go to
//! `prepare_cached` unchanged (parsed once per connection).
//!
//! Every call is synchronous; the futures are ready at once. [`run`] drives one with
//! `futures::executor::block_on` on the thread that owns the connection (the writer thread,
//! or a `spawn_blocking` read): it never waits, so no runtime is involved.

use std::sync::Arc;

use futures::future::BoxFuture;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, Statement};

use super::{Dialect, EachRow, Native, Row, Sql, Tx, Value};
use crate::store::StoreError;

/// A transaction (or a read) on a SQLite connection.
pub struct SqliteTx<'c> {
    conn: &'c mut Connection,
}

impl<'c> SqliteTx<'c> {
    pub fn new(conn: &'c mut Connection) -> SqliteTx<'c> {
        SqliteTx { conn }
    }

    /// The connection itself, for what only SQLite has (pragmas, backups).
    pub fn connection(&self) -> &Connection {
        self.conn
    }
}

/// Runs a query function on `conn` to the end (its futures never wait).
pub fn run<R>(
    conn: &mut Connection,
    f: impl for<'t> FnOnce(&'t mut dyn Tx) -> BoxFuture<'t, Result<R, StoreError>>,
) -> Result<R, StoreError> {
    let mut tx = SqliteTx::new(conn);
    futures::executor::block_on(f(&mut tx))
}

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::ToSqlOutput::Borrowed;
        Ok(match self {
            Value::Null => Borrowed(ValueRef::Null),
            Value::Int(v) => Borrowed(ValueRef::Integer(*v)),
            Value::Bool(b) => Borrowed(ValueRef::Integer(i64::from(*b))),
            Value::Real(v) => Borrowed(ValueRef::Real(*v)),
            Value::Text(s) => Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Blob(b) => Borrowed(ValueRef::Blob(b)),
        })
    }
}

/// Binds `params` to `stmt` by the numbers in the parameters' names (`$3` → `params[2]`).
fn bind(stmt: &mut Statement<'_>, params: &[Value<'_>]) -> Result<(), StoreError> {
    let mut highest = 0;
    for index in 1..=stmt.parameter_count() {
        let name = stmt.parameter_name(index).unwrap_or("");
        let n: usize = name
            .strip_prefix('$')
            .and_then(|n| n.parse().ok())
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                StoreError::Database(format!("parameter {name:?}: write $1, $2, ..."))
            })?;
        let value = params.get(n - 1).ok_or_else(|| {
            StoreError::Database(format!("{name} has no value ({} given)", params.len()))
        })?;
        stmt.raw_bind_parameter(index, value)?;
        highest = highest.max(n);
    }
    // As PostgreSQL: as many values as the statement has parameters.
    if highest != params.len() {
        return Err(StoreError::Database(format!(
            "{} values for a statement of {highest} parameters",
            params.len()
        )));
    }
    Ok(())
}

fn value_of(v: ValueRef<'_>, column: &str) -> Result<Value<'static>, StoreError> {
    Ok(match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(
            String::from_utf8(t.to_vec())
                .map_err(|_| StoreError::Corrupt(format!("column {column}: text not UTF-8")))?
                .into(),
        ),
        ValueRef::Blob(b) => Value::Blob(b.to_vec().into()),
    })
}

impl SqliteTx<'_> {
    fn each_row(
        &mut self,
        sql: Sql<'_>,
        params: &[Value<'_>],
        each: &mut dyn FnMut(Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare_cached(sql.sqlite)?;
        bind(&mut stmt, params)?;
        let columns: Arc<[String]> = stmt.column_names().into_iter().map(String::from).collect();
        let mut rows = stmt.raw_query();
        while let Some(r) = rows.next()? {
            let values = (0..columns.len())
                .map(|i| value_of(r.get_ref(i)?, &columns[i]))
                .collect::<Result<_, StoreError>>()?;
            each(Row::new(columns.clone(), values))?;
        }
        Ok(())
    }
}

impl Tx for SqliteTx<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn native(&mut self) -> Native<'_> {
        Native::Sqlite(self.conn)
    }

    fn run<'a>(
        &'a mut self,
        sql: Sql<'a>,
        params: &'a [Value<'a>],
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let result = (|| {
            let mut stmt = self.conn.prepare_cached(sql.sqlite)?;
            bind(&mut stmt, params)?;
            // A statement with RETURNING (or a SELECT) steps like a query.
            if stmt.column_count() > 0 {
                let mut rows = stmt.raw_query();
                let mut n = 0;
                while rows.next()?.is_some() {
                    n += 1;
                }
                return Ok(n);
            }
            Ok(stmt.raw_execute()? as u64)
        })();
        Box::pin(std::future::ready(result))
    }

    fn rows<'a>(
        &'a mut self,
        sql: Sql<'a>,
        params: &'a [Value<'a>],
    ) -> BoxFuture<'a, Result<Vec<Row>, StoreError>> {
        let mut out = Vec::new();
        let result = self
            .each_row(sql, params, &mut |r| {
                out.push(r);
                Ok(())
            })
            .map(|()| out);
        Box::pin(std::future::ready(result))
    }

    fn stream<'a>(
        &'a mut self,
        sql: Sql<'a>,
        params: &'a [Value<'a>],
        each: EachRow<'a>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let result = self.each_row(sql, params, each);
        Box::pin(std::future::ready(result))
    }
}
