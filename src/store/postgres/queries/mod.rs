//! The PostgreSQL queries, one module per table as in `store::sqlite::queries`, each
//! function the counterpart of the SQLite one of the same name, over a transaction
//! ([`super::PgStore::write`] / [`super::PgStore::read`]). Ported so far: [`syncs`], [`push`] (with the
//! feed's `backlog`).

pub mod push;
pub mod syncs;

pub use push::*;
pub use syncs::*;

use crate::time::Timestamp;

fn ts(v: Option<i64>) -> Option<Timestamp> {
    v.map(Timestamp)
}

/// A count or size as PostgreSQL's `BIGINT`.
fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
