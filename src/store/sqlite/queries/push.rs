//! The push outbox (`push_state`, `push_parked`, migration 7): the durable cursor of what the
//! MDM acknowledged, the pinned batch in flight, and the parked changes. Every update of the
//! batch is conditional on the batch still being the one pinned, so a `push replay` that
//! happens while an attempt is in flight is never overwritten by that attempt's answer.

use rusqlite::{params, Connection, OptionalExtension};

use super::ts;
use crate::store::{InFlightView, ParkedView, PushRow, PushStatusView, ReplayRefused, StoreError};
use crate::time::Timestamp;

pub fn push_state(conn: &Connection) -> Result<PushRow, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT delivered_seq, batch_first, batch_last, batch_since, attempts, next_attempt_at, \
             replays, last_error, last_error_at, last_success_at FROM push_state WHERE id = 1",
        )?
        .query_row([], |r| {
            let first: Option<i64> = r.get(1)?;
            let last: Option<i64> = r.get(2)?;
            let since: Option<i64> = r.get(3)?;
            Ok(PushRow {
                delivered: r.get(0)?,
                batch: match (first, last, since) {
                    (Some(f), Some(l), Some(s)) => Some((f, l, Timestamp(s))),
                    _ => None,
                },
                attempts: r.get::<_, i64>(4)?.clamp(0, i64::from(u32::MAX)) as u32,
                next_attempt_at: ts(r.get(5)?),
                replays: r.get::<_, i64>(6)?.clamp(0, i64::from(u32::MAX)) as u32,
                last_error: r.get(7)?,
                last_error_at: ts(r.get(8)?),
                last_success_at: ts(r.get(9)?),
            })
        })
        .optional()?;
    row.ok_or_else(|| StoreError::Corrupt("the push_state row is missing".into()))
}

/// Pins `first..=last` as the batch in flight, if the cursor is still `delivered` and no
/// batch is pinned. Returns whether it did.
pub fn push_pin(
    conn: &Connection,
    delivered: i64,
    first: i64,
    last: i64,
    since: Timestamp,
) -> Result<bool, StoreError> {
    let n = conn.execute(
        "UPDATE push_state SET batch_first = ?2, batch_last = ?3, batch_since = ?4, attempts = 0, \
         next_attempt_at = NULL WHERE id = 1 AND delivered_seq = ?1 AND batch_first IS NULL",
        params![delivered, first, last, since.0],
    )?;
    Ok(n == 1)
}

const PINNED: &str = "id = 1 AND batch_first = ?1 AND batch_last = ?2";

/// The MDM acknowledged the batch: the cursor moves to its last seq.
pub fn push_ack(
    conn: &Connection,
    first: i64,
    last: i64,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let n = conn.execute(
        &format!(
            "UPDATE push_state SET delivered_seq = MAX(delivered_seq, ?2), batch_first = NULL, \
             batch_last = NULL, batch_since = NULL, attempts = 0, next_attempt_at = NULL, \
             last_success_at = ?3 WHERE {PINNED}"
        ),
        params![first, last, now.0],
    )?;
    Ok(n == 1)
}

/// An attempt failed; the next is due at `next_at`.
pub fn push_failed(
    conn: &Connection,
    first: i64,
    last: i64,
    attempts: u32,
    next_at: Timestamp,
    error: &str,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let n = conn.execute(
        &format!(
            "UPDATE push_state SET attempts = ?3, next_attempt_at = ?4, last_error = ?5, \
             last_error_at = ?6 WHERE {PINNED}"
        ),
        params![first, last, attempts, next_at.0, error, now.0],
    )?;
    Ok(n == 1)
}

/// The batch was undeliverable for `dead_after`: its changes are recorded in `push_parked`
/// (`items`: seq and the JSON as it was sent) and the cursor moves past them.
#[allow(clippy::too_many_arguments)]
pub fn push_park(
    conn: &Connection,
    first: i64,
    last: i64,
    since: Timestamp,
    attempts: u32,
    error: &str,
    items: &[(i64, String)],
    now: Timestamp,
) -> Result<bool, StoreError> {
    let n = conn.execute(
        &format!(
            "UPDATE push_state SET delivered_seq = MAX(delivered_seq, ?2), batch_first = NULL, \
             batch_last = NULL, batch_since = NULL, attempts = 0, next_attempt_at = NULL, \
             last_error = ?3, last_error_at = ?4 WHERE {PINNED}"
        ),
        params![first, last, error, now.0],
    )?;
    if n == 0 {
        return Ok(false);
    }
    let mut ins = conn.prepare_cached(
        "INSERT OR REPLACE INTO push_parked (seq, parked_at, failing_since, attempts, last_error, item) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for (seq, item) in items {
        ins.execute(params![seq, now.0, since.0, attempts, error, item])?;
    }
    Ok(true)
}

/// `push replay --after SEQ`: every change after `after` is delivered again (under new
/// webhook-ids); parked changes after it are re-queued too.
pub fn push_replay(
    conn: &Connection,
    after: i64,
) -> Result<Result<u32, ReplayRefused>, StoreError> {
    let st = push_state(conn)?;
    if after > st.delivered {
        return Ok(Err(ReplayRefused::PastCursor {
            delivered: st.delivered,
        }));
    }
    conn.execute(
        "UPDATE push_state SET delivered_seq = ?1, batch_first = NULL, batch_last = NULL, \
         batch_since = NULL, attempts = 0, next_attempt_at = NULL, replays = replays + 1 WHERE id = 1",
        [after],
    )?;
    conn.execute("DELETE FROM push_parked WHERE seq > ?1", [after])?;
    Ok(Ok(st.replays + 1))
}

pub fn push_status(conn: &Connection) -> Result<PushStatusView, StoreError> {
    let st = push_state(conn)?;
    let (backlog, last_seq) = super::feed::backlog(conn, st.delivered)?;
    let parked: i64 = conn.query_row("SELECT COUNT(*) FROM push_parked", [], |r| r.get(0))?;
    let recent_parked = conn
        .prepare_cached(
            "SELECT seq, parked_at, failing_since, attempts, last_error, item FROM push_parked \
             ORDER BY parked_at DESC, seq DESC LIMIT 20",
        )?
        .query_map([], |r| {
            let item: String = r.get(5)?;
            Ok(ParkedView {
                seq: r.get(0)?,
                parked_at: Timestamp(r.get(1)?),
                failing_since: Timestamp(r.get(2)?),
                attempts: r.get::<_, i64>(3)?.clamp(0, i64::from(u32::MAX)) as u32,
                last_error: r.get(4)?,
                change: serde_json::from_str(&item).unwrap_or(serde_json::Value::Null),
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(PushStatusView {
        last_delivered_seq: st.delivered,
        last_seq,
        backlog,
        in_flight: st.batch.map(|(first, last, since)| InFlightView {
            first_seq: first,
            last_seq: last,
            failing_since: (st.attempts > 0).then_some(since),
            attempts: st.attempts,
            next_attempt_at: st.next_attempt_at,
        }),
        last_error: st.last_error,
        last_error_at: st.last_error_at,
        last_success_at: st.last_success_at,
        replays: st.replays,
        parked: parked.max(0) as u64,
        recent_parked,
    })
}
