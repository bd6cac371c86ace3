//! The SQLite queries not yet written once for both backends (see `crate::store::sql`).
//! Plain functions over a `&Connection`, run by the operations of [`crate::store::Store`]
//! inside the writer's transaction or on a read connection. One module per table:
//! [`events`] (with their history, failures and polls), [`notifications`], [`syncs`] (what
//! the unconverted events and mirror still call), [`feed`] (reading the changes feed),
//! [`push`] (the outbox), [`licences`], and [`leases`] / [`handoffs`] (to be deleted: one
//! SQLite instance has nothing to lease); the types they take and return live in
//! `crate::store`. Everything is re-exported here.

pub mod events;
pub mod feed;
pub mod handoffs;
pub mod leases;
pub mod licences;
pub mod notifications;
pub mod push;
pub mod submissions;
pub mod syncs;

pub use events::*;
pub use feed::*;
pub use licences::*;
pub use notifications::*;
pub use push::*;
pub use submissions::*;
pub use syncs::*;

use crate::time::Timestamp;

fn ts(v: Option<i64>) -> Option<Timestamp> {
    v.map(Timestamp)
}

fn parse_col<T: std::str::FromStr<Err = String>>(s: String, col: &str) -> rusqlite::Result<T> {
    s.parse::<T>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("column {col}: {e}").into(),
        )
    })
}
