//! The `syncs` table: sync runs started, finished, abandoned and listed.

use rusqlite::{params, Connection, Row};

use super::ts;
use crate::core::SyncKind;
use crate::store::views::SyncView;
use crate::store::{StoreError, SyncEnd};
use crate::time::Timestamp;

pub fn next_sync_id(conn: &Connection) -> Result<u64, StoreError> {
    let id: i64 = conn.query_row("SELECT COALESCE(MAX(id), 0) + 1 FROM syncs", [], |r| {
        r.get(0)
    })?;
    Ok(id.max(1) as u64)
}

pub fn sync_started(
    conn: &Connection,
    id: u64,
    token: &str,
    kind: SyncKind,
    full: bool,
    cause: &str,
    at: Timestamp,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT OR REPLACE INTO syncs (id, token, kind, full, cause, started_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![id as i64, token, kind.as_str(), full, cause, at.0],
    )?;
    Ok(())
}

pub fn sync_finished(
    conn: &Connection,
    id: u64,
    at: Timestamp,
    end: &SyncEnd,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE syncs SET finished_at = ?2, pages = ?3, records = ?4, result = ?5, error = ?6, \
         version_id = ?7 WHERE id = ?1",
        params![
            id as i64,
            at.0,
            end.pages,
            end.records as i64,
            if end.ok { "ok" } else { "failed" },
            end.error,
            end.version_id
        ],
    )?;
    Ok(())
}

/// Marks runs left `running` by a crash as abandoned.
pub fn abandon_running_syncs(conn: &Connection, at: Timestamp) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "UPDATE syncs SET result = 'abandoned', finished_at = ?1 WHERE result = 'running'",
        [at.0],
    )?)
}

pub(super) const SYNC_COLS: &str =
    "id, token, kind, full, cause, started_at, finished_at, pages, records, result, error";

pub(super) fn sync_from_row(r: &Row<'_>) -> rusqlite::Result<SyncView> {
    let started: i64 = r.get(5)?;
    let finished: Option<i64> = r.get(6)?;
    Ok(SyncView {
        id: r.get::<_, i64>(0)? as u64,
        token: r.get(1)?,
        kind: r.get(2)?,
        full: r.get(3)?,
        cause: r.get(4)?,
        started_at: Timestamp(started),
        finished_at: ts(finished),
        duration_ms: finished.map(|f| f - started),
        pages: r.get(7)?,
        records: r.get::<_, i64>(8)? as u64,
        result: r.get(9)?,
        error: r.get(10)?,
    })
}

pub fn list_syncs(
    conn: &Connection,
    token: Option<&str>,
    limit: u32,
) -> Result<Vec<SyncView>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {SYNC_COLS} FROM syncs WHERE (?1 IS NULL OR token = ?1) ORDER BY id DESC LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![token, limit.clamp(1, 10_000)], sync_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Sync runs newest first, strictly older than the run `before` when given (the local API's
/// cursor).
pub fn list_syncs_page(
    conn: &Connection,
    token: Option<&str>,
    before: Option<u64>,
    limit: u32,
) -> Result<Vec<SyncView>, StoreError> {
    let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {SYNC_COLS} FROM syncs WHERE (?1 IS NULL OR token = ?1) AND id < ?2 ORDER BY id DESC LIMIT ?3"
    ))?;
    let rows = stmt.query_map(
        params![token, before, limit.clamp(1, 10_000)],
        sync_from_row,
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}
