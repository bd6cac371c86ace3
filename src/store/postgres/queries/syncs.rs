//! The `syncs` table: sync runs started, finished, abandoned and listed.

use tokio_postgres::{Row, Transaction};

use super::{big, ts};
use crate::core::SyncKind;
use crate::store::views::SyncView;
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

/// Marks runs left `running` by a crash as abandoned.
pub async fn abandon_running_syncs(
    tx: &Transaction<'_>,
    at: Timestamp,
) -> Result<usize, StoreError> {
    Ok(tx
        .execute(
            "UPDATE syncs SET result = 'abandoned', finished_at = $1 WHERE result = 'running'",
            &[&at.0],
        )
        .await? as usize)
}

pub(super) const SYNC_COLS: &str =
    "id, token, kind, \"full\", cause, started_at, finished_at, pages, records, result, error";

pub(super) fn sync_from_row(r: &Row) -> SyncView {
    let started: i64 = r.get(5);
    let finished: Option<i64> = r.get(6);
    SyncView {
        id: r.get::<_, i64>(0) as u64,
        token: r.get(1),
        kind: r.get(2),
        full: r.get(3),
        cause: r.get(4),
        started_at: Timestamp(started),
        finished_at: ts(finished),
        duration_ms: finished.map(|f| f - started),
        pages: r.get::<_, i64>(7).clamp(0, i64::from(u32::MAX)) as u32,
        records: r.get::<_, i64>(8).max(0) as u64,
        result: r.get(9),
        error: r.get(10),
    }
}

pub async fn list_syncs(
    tx: &Transaction<'_>,
    token: Option<&str>,
    limit: u32,
) -> Result<Vec<SyncView>, StoreError> {
    list_syncs_page(tx, token, None, limit).await
}

/// Sync runs newest first, strictly older than the run `before` when given (the local API's
/// cursor).
pub async fn list_syncs_page(
    tx: &Transaction<'_>,
    token: Option<&str>,
    before: Option<u64>,
    limit: u32,
) -> Result<Vec<SyncView>, StoreError> {
    let before = before.map_or(i64::MAX, big);
    let rows = tx
        .query(
            &format!(
                "SELECT {SYNC_COLS} FROM syncs WHERE ($1::TEXT IS NULL OR token = $1) AND id < $2 \
                 ORDER BY id DESC LIMIT $3"
            ),
            &[&token, &before, &i64::from(limit.clamp(1, 10_000))],
        )
        .await?;
    Ok(rows.iter().map(sync_from_row).collect())
}
