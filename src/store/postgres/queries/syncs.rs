//! The `syncs` table: sync runs started, finished, abandoned and listed.

use tokio_postgres::Transaction;

use super::big;
use crate::core::SyncKind;
use crate::store::{StoreError, SyncEnd};
use crate::time::Timestamp;

pub async fn next_sync_id(tx: &Transaction<'_>) -> Result<u64, StoreError> {
    let id: i64 = tx
        .query_one("SELECT COALESCE(MAX(id), 0) + 1 FROM syncs", &[])
        .await?
        .get(0);
    Ok(id.max(1) as u64)
}

pub async fn sync_started(
    tx: &Transaction<'_>,
    id: u64,
    token: &str,
    kind: SyncKind,
    full: bool,
    cause: &str,
    at: Timestamp,
) -> Result<(), StoreError> {
    // SQLite's INSERT OR REPLACE: a run row with this id starts over.
    tx.execute(
        "INSERT INTO syncs (id, token, kind, \"full\", cause, started_at) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (id) DO UPDATE SET token = excluded.token, kind = excluded.kind, \
         \"full\" = excluded.\"full\", cause = excluded.cause, started_at = excluded.started_at, \
         finished_at = NULL, pages = 0, records = 0, result = 'running', error = NULL, \
         version_id = NULL",
        &[&big(id), &token, &kind.as_str(), &full, &cause, &at.0],
    )
    .await?;
    Ok(())
}

pub async fn sync_finished(
    tx: &Transaction<'_>,
    id: u64,
    at: Timestamp,
    end: &SyncEnd,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE syncs SET finished_at = $2, pages = $3, records = $4, result = $5, error = $6, \
         version_id = $7 WHERE id = $1",
        &[
            &big(id),
            &at.0,
            &i64::from(end.pages),
            &big(end.records),
            &if end.ok { "ok" } else { "failed" },
            &end.error,
            &end.version_id,
        ],
    )
    .await?;
    Ok(())
}
