//! The `syncs` table: sync runs started, finished, abandoned and listed.

use rusqlite::{params, Connection};

use crate::core::SyncKind;
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
