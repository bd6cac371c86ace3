//! One query source for every backend: the store's queries are written once, as functions
//! over [`Tx`], in SQL both engines run; only where the dialects differ does a statement
//! carry a text per dialect ([`Sql::pair`]).
//!
//! Statements use PostgreSQL's `$1..$n` placeholders. SQLite reads `$1` as a *named*
//! parameter, so its adapter binds each parameter by the number in its name, not by its
//! position ([`sqlite`]); the text itself is never rewritten, so a `$` inside a string
//! literal is the tokenizer's business, not ours. Parameters are owned-or-borrowed
//! [`Value`]s; rows come back as [`Row`]s of owned values with typed getters that answer
//! [`StoreError::Corrupt`] naming the column, never panic. What the SQL does not say is pure
//! Rust in the query functions (or in the modules of the rules they apply).
//!
//! The adapters: [`sqlite`] over a rusqlite connection (sync calls in ready futures, run by
//! the writer thread and the read pool with `futures::executor::block_on`), [`postgres`] over
//! a pooled transaction (its statement cache: each text is parsed once per connection).

pub mod postgres;
pub mod sqlite;

use std::borrow::Cow;
use std::sync::Arc;

use futures::future::BoxFuture;

use super::StoreError;
use crate::time::Timestamp;

/// Which engine a transaction speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A statement's text, one per dialect; the same text where they agree (`"...".into()`).
#[derive(Clone, Copy, Debug)]
pub struct Sql<'a> {
    pub sqlite: &'a str,
    pub postgres: &'a str,
}

impl<'a> Sql<'a> {
    /// A statement whose dialects differ.
    pub const fn pair(sqlite: &'a str, postgres: &'a str) -> Sql<'a> {
        Sql { sqlite, postgres }
    }

    pub fn text(&self, dialect: Dialect) -> &'a str {
        match dialect {
            Dialect::Sqlite => self.sqlite,
            Dialect::Postgres => self.postgres,
        }
    }
}

impl<'a> From<&'a str> for Sql<'a> {
    fn from(text: &'a str) -> Sql<'a> {
        Sql::pair(text, text)
    }
}

impl<'a> From<&'a String> for Sql<'a> {
    fn from(text: &'a String) -> Sql<'a> {
        Sql::pair(text, text)
    }
}

/// A parameter or a column's value. Integers are `i64` in both engines (PostgreSQL's
/// `BIGINT`, SQLite's `INTEGER`); flags are `BOOLEAN` in PostgreSQL and 0/1 in SQLite.
#[derive(Clone, Debug, PartialEq)]
pub enum Value<'a> {
    Null,
    Int(i64),
    Bool(bool),
    Real(f64),
    Text(Cow<'a, str>),
    Blob(Cow<'a, [u8]>),
}

impl Value<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Int(_) => "an integer",
            Value::Bool(_) => "a boolean",
            Value::Real(_) => "a real",
            Value::Text(_) => "text",
            Value::Blob(_) => "a blob",
        }
    }
}

impl From<i64> for Value<'_> {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<i32> for Value<'_> {
    fn from(v: i32) -> Self {
        Value::Int(v.into())
    }
}
impl From<u32> for Value<'_> {
    fn from(v: u32) -> Self {
        Value::Int(v.into())
    }
}
/// Counts and ids beyond `i64::MAX` (never met) saturate rather than wrap.
impl From<u64> for Value<'_> {
    fn from(v: u64) -> Self {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<usize> for Value<'_> {
    fn from(v: usize) -> Self {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<bool> for Value<'_> {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl From<f64> for Value<'_> {
    fn from(v: f64) -> Self {
        Value::Real(v)
    }
}
impl From<Timestamp> for Value<'_> {
    fn from(v: Timestamp) -> Self {
        Value::Int(v.0)
    }
}
impl<'a> From<&'a str> for Value<'a> {
    fn from(v: &'a str) -> Self {
        Value::Text(Cow::Borrowed(v))
    }
}
impl<'a> From<&'a String> for Value<'a> {
    fn from(v: &'a String) -> Self {
        Value::Text(Cow::Borrowed(v))
    }
}
impl From<String> for Value<'_> {
    fn from(v: String) -> Self {
        Value::Text(Cow::Owned(v))
    }
}
impl<'a> From<&'a [u8]> for Value<'a> {
    fn from(v: &'a [u8]) -> Self {
        Value::Blob(Cow::Borrowed(v))
    }
}
impl From<Vec<u8>> for Value<'_> {
    fn from(v: Vec<u8>) -> Self {
        Value::Blob(Cow::Owned(v))
    }
}
impl<'a, T: Into<Value<'a>>> From<Option<T>> for Value<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}
impl<'a> From<&'a Option<String>> for Value<'a> {
    fn from(v: &'a Option<String>) -> Self {
        v.as_deref().into()
    }
}

/// The parameters of a statement: `args![a, b]` is `&[Value::from(a), Value::from(b)]`.
macro_rules! args {
    ($($v:expr),* $(,)?) => {
        &[$($crate::store::sql::Value::from($v)),*][..]
    };
}
pub(crate) use args;

/// One row of a result: its values, and the names of its columns for messages.
#[derive(Clone, Debug)]
pub struct Row {
    columns: Arc<[String]>,
    values: Vec<Value<'static>>,
}

impl Row {
    pub(crate) fn new(columns: Arc<[String]>, values: Vec<Value<'static>>) -> Row {
        Row { columns, values }
    }

    fn at(&self, i: usize) -> Result<&Value<'static>, StoreError> {
        self.values
            .get(i)
            .ok_or_else(|| StoreError::Corrupt(format!("no column {i} in the result")))
    }

    fn wrong(&self, i: usize, want: &str) -> StoreError {
        let name = self.columns.get(i).map_or("?", String::as_str);
        let found = self.values.get(i).map_or("nothing", Value::kind);
        StoreError::Corrupt(format!("column {name}: {found} where {want} belongs"))
    }

    pub fn opt_i64(&self, i: usize) -> Result<Option<i64>, StoreError> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Int(v) => Ok(Some(*v)),
            Value::Bool(b) => Ok(Some(i64::from(*b))),
            _ => Err(self.wrong(i, "an integer")),
        }
    }

    pub fn i64(&self, i: usize) -> Result<i64, StoreError> {
        self.opt_i64(i)?.ok_or_else(|| self.wrong(i, "an integer"))
    }

    /// A count or an id (never negative as stored; a negative one reads as 0).
    pub fn u64(&self, i: usize) -> Result<u64, StoreError> {
        Ok(self.i64(i)?.max(0) as u64)
    }

    /// A count the core keeps as `u32` (clamped).
    pub fn u32(&self, i: usize) -> Result<u32, StoreError> {
        Ok(self.i64(i)?.clamp(0, i64::from(u32::MAX)) as u32)
    }

    pub fn bool(&self, i: usize) -> Result<bool, StoreError> {
        match self.at(i)? {
            Value::Bool(b) => Ok(*b),
            Value::Int(v) => Ok(*v != 0),
            _ => Err(self.wrong(i, "a flag")),
        }
    }

    pub fn opt_str(&self, i: usize) -> Result<Option<&str>, StoreError> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Text(s) => Ok(Some(s)),
            _ => Err(self.wrong(i, "text")),
        }
    }

    pub fn str(&self, i: usize) -> Result<&str, StoreError> {
        self.opt_str(i)?.ok_or_else(|| self.wrong(i, "text"))
    }

    pub fn string(&self, i: usize) -> Result<String, StoreError> {
        self.str(i).map(str::to_string)
    }

    pub fn opt_string(&self, i: usize) -> Result<Option<String>, StoreError> {
        Ok(self.opt_str(i)?.map(str::to_string))
    }

    pub fn ts(&self, i: usize) -> Result<Timestamp, StoreError> {
        self.i64(i).map(Timestamp)
    }

    pub fn opt_ts(&self, i: usize) -> Result<Option<Timestamp>, StoreError> {
        Ok(self.opt_i64(i)?.map(Timestamp))
    }

    pub fn opt_blob(&self, i: usize) -> Result<Option<&[u8]>, StoreError> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Blob(b) => Ok(Some(b)),
            _ => Err(self.wrong(i, "a blob")),
        }
    }

    /// A column holding one of the core's words (a state, a kind, ...).
    pub fn parse<T: std::str::FromStr<Err = String>>(&self, i: usize) -> Result<T, StoreError> {
        let name = self.columns.get(i).map_or("?", String::as_str);
        self.str(i)?
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("column {name}: {e}")))
    }
}

/// A backend's own transaction ([`Tx::native`]).
pub enum Native<'a> {
    Sqlite(&'a rusqlite::Connection),
    Postgres(&'a super::postgres::Transaction<'a>),
}

/// What each row of a streamed read is handed to.
pub type EachRow<'a> = &'a mut (dyn FnMut(Row) -> Result<(), StoreError> + Send);

/// A transaction of either backend. Object-safe, so a query is one function over
/// `&mut dyn Tx`; the convenient, generic forms are the inherent methods of `dyn Tx`
/// ([`execute`](#method.execute), [`query`](#method.query), ...).
pub trait Tx: Send {
    fn dialect(&self) -> Dialect;

    /// Runs a statement; answers the number of rows it changed.
    fn run<'a>(
        &'a mut self,
        sql: Sql<'a>,
        params: &'a [Value<'a>],
    ) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Runs a query; answers every row.
    fn rows<'a>(
        &'a mut self,
        sql: Sql<'a>,
        params: &'a [Value<'a>],
    ) -> BoxFuture<'a, Result<Vec<Row>, StoreError>>;

    /// The driver's own transaction, for the few steps one engine alone has.
    fn native(&mut self) -> Native<'_>;

    /// Runs a query and hands each row to `each` as it comes (constant memory).
    fn stream<'a>(
        &'a mut self,
        sql: Sql<'a>,
        params: &'a [Value<'a>],
        each: EachRow<'a>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

impl dyn Tx + '_ {
    /// Runs a statement; answers the number of rows it changed.
    pub async fn execute<'a>(
        &mut self,
        sql: impl Into<Sql<'a>>,
        params: &[Value<'_>],
    ) -> Result<u64, StoreError> {
        self.run(sql.into(), params).await
    }

    /// Every row of a query.
    pub async fn query<'a>(
        &mut self,
        sql: impl Into<Sql<'a>>,
        params: &[Value<'_>],
    ) -> Result<Vec<Row>, StoreError> {
        self.rows(sql.into(), params).await
    }

    /// The first row of a query, if any.
    pub async fn query_opt<'a>(
        &mut self,
        sql: impl Into<Sql<'a>>,
        params: &[Value<'_>],
    ) -> Result<Option<Row>, StoreError> {
        Ok(self.rows(sql.into(), params).await?.into_iter().next())
    }

    /// The first row of a query that always answers one (`COUNT(*)`, `RETURNING`).
    pub async fn query_one<'a>(
        &mut self,
        sql: impl Into<Sql<'a>>,
        params: &[Value<'_>],
    ) -> Result<Row, StoreError> {
        let sql = sql.into();
        self.rows(sql, params)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::Corrupt(format!("no row from {}", sql.postgres)))
    }

    /// Hands each row of a query to `each` as it comes (constant memory).
    pub async fn for_each<'a>(
        &mut self,
        sql: impl Into<Sql<'a>>,
        params: &[Value<'_>],
        mut each: impl FnMut(Row) -> Result<(), StoreError> + Send,
    ) -> Result<(), StoreError> {
        self.stream(sql.into(), params, &mut each).await
    }
}

/// A closure over a transaction, as the store's entry points take it.
pub type TxFn<R> =
    Box<dyn for<'t> FnOnce(&'t mut dyn Tx) -> BoxFuture<'t, Result<R, StoreError>> + Send>;

#[cfg(test)]
pub(crate) mod tests;
