//! `submissions`: pruning the idempotency keys along the events' retention. The rest is
//! written once in `store::submissions`; this twin goes when the events' queries move onto
//! `store::sql::Tx` (issue 17).

use rusqlite::{params, Connection};

use crate::store::StoreError;
use crate::time::Timestamp;

/// Deletes up to `batch` keys first used before `before` (the events they made are pruned
/// on the same retention).
pub fn prune_submissions(
    conn: &Connection,
    before: Timestamp,
    batch: u32,
) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "DELETE FROM submissions WHERE rowid IN \
         (SELECT rowid FROM submissions WHERE created_at < ?1 LIMIT ?2)",
        params![before.0, batch],
    )?)
}
