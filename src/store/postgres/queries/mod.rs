//! The PostgreSQL queries not yet written once for both backends (see `crate::store::sql`),
//! one module per table as in `store::sqlite::queries`, each function the counterpart of
//! the SQLite one of the same name, over a transaction ([`super::PgStore::write`] /
//! [`super::PgStore::read`]); [`stats`] is named by module, as in SQLite; the mirror's rows
//! are in `postgres::mirror`, as `sqlite::mirror`.

pub mod events;
pub mod feed;
pub mod handoffs;
pub mod leases;
pub mod licences;
pub mod notifications;
pub mod push;
pub mod stats;
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

/// A count or size as PostgreSQL's `BIGINT`.
pub(super) fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A count stored as `BIGINT`, as the `u32` the core keeps.
fn u32_of(v: i64) -> u32 {
    v.clamp(0, i64::from(u32::MAX)) as u32
}

/// A column holding one of the core's words (a state, a type, ...).
fn parse<T: std::str::FromStr<Err = String>>(
    s: String,
    col: &str,
) -> Result<T, crate::store::StoreError> {
    s.parse::<T>()
        .map_err(|e| crate::store::StoreError::Corrupt(format!("column {col}: {e}")))
}
