//! The changes feed: the `change_seq` counter and the events after a given sequence number.

use rusqlite::{params, Connection};

use super::events::{event_at, view_from_record, EVENT_COLS};
use super::views::ChangeView;
use crate::core::EventRecord;
use crate::store::StoreError;

/// Takes the next feed sequence number. A counter of its own (not `MAX(change_seq)`), so a
/// number is never handed out twice, also after retention pruned the rows holding it.
pub(super) fn next_change_seq(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn
        .prepare_cached(
            "UPDATE counters SET value = value + 1 WHERE name = 'change_seq' RETURNING value",
        )?
        .query_row([], |r| r.get(0))?)
}

pub fn changes_after(
    conn: &Connection,
    after: i64,
    limit: u32,
) -> Result<Vec<ChangeView>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT change_seq, {EVENT_COLS} FROM events WHERE change_seq > ?1 ORDER BY change_seq LIMIT ?2"
    ))?;
    let rows: Vec<(i64, EventRecord)> = stmt
        .query_map(params![after, limit.clamp(1, 10_000)], |r| {
            Ok((r.get(0)?, event_at(r, 1)?))
        })?
        .collect::<Result<_, _>>()?;
    rows.into_iter()
        .map(|(seq, rec)| {
            Ok(ChangeView {
                seq,
                event: view_from_record(conn, rec)?,
            })
        })
        .collect()
}
