//! The push outbox (`push_state`, `push_parked`): the durable cursor of what the MDM
//! acknowledged, the pinned batch in flight, and the parked changes. Every update of the
//! batch is conditional on the batch still being the one pinned, one statement each, so it
//! is atomic also with several instances; `push replay` locks the row it reads.

use tokio_postgres::{Row, Transaction};

use super::ts;
use crate::store::{InFlightView, ParkedView, PushRow, PushStatusView, ReplayRefused, StoreError};
use crate::time::Timestamp;

const STATE_COLS: &str = "delivered_seq, batch_first, batch_last, batch_since, attempts, \
    next_attempt_at, replays, last_error, last_error_at, last_success_at";

fn count32(v: i64) -> u32 {
    v.clamp(0, i64::from(u32::MAX)) as u32
}

fn push_row(r: &Row) -> PushRow {
    let first: Option<i64> = r.get(1);
    let last: Option<i64> = r.get(2);
    let since: Option<i64> = r.get(3);
    PushRow {
        delivered: r.get(0),
        batch: match (first, last, since) {
            (Some(f), Some(l), Some(s)) => Some((f, l, Timestamp(s))),
            _ => None,
        },
        attempts: count32(r.get(4)),
        next_attempt_at: ts(r.get(5)),
        replays: count32(r.get(6)),
        last_error: r.get(7),
        last_error_at: ts(r.get(8)),
        last_success_at: ts(r.get(9)),
    }
}

async fn state(tx: &Transaction<'_>, lock: bool) -> Result<PushRow, StoreError> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    let row = tx
        .query_opt(
            &format!("SELECT {STATE_COLS} FROM push_state WHERE id = 1{lock}"),
            &[],
        )
        .await?;
    row.as_ref()
        .map(push_row)
        .ok_or_else(|| StoreError::Corrupt("the push_state row is missing".into()))
}

pub async fn push_state(tx: &Transaction<'_>) -> Result<PushRow, StoreError> {
    state(tx, false).await
}

/// Pins `first..=last` as the batch in flight, if the cursor is still `delivered` and no
/// batch is pinned. Returns whether it did.
pub async fn push_pin(
    tx: &Transaction<'_>,
    delivered: i64,
    first: i64,
    last: i64,
    since: Timestamp,
) -> Result<bool, StoreError> {
    let n = tx
        .execute(
            "UPDATE push_state SET batch_first = $2, batch_last = $3, batch_since = $4, \
             attempts = 0, next_attempt_at = NULL \
             WHERE id = 1 AND delivered_seq = $1 AND batch_first IS NULL",
            &[&delivered, &first, &last, &since.0],
        )
        .await?;
    Ok(n == 1)
}

const PINNED: &str = "id = 1 AND batch_first = $1 AND batch_last = $2";

/// The MDM acknowledged the batch: the cursor moves to its last seq.
pub async fn push_ack(
    tx: &Transaction<'_>,
    first: i64,
    last: i64,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let n = tx
        .execute(
            &format!(
                "UPDATE push_state SET delivered_seq = GREATEST(delivered_seq, $2), \
                 batch_first = NULL, batch_last = NULL, batch_since = NULL, attempts = 0, \
                 next_attempt_at = NULL, last_success_at = $3 WHERE {PINNED}"
            ),
            &[&first, &last, &now.0],
        )
        .await?;
    Ok(n == 1)
}

/// An attempt failed; the next is due at `next_at`.
pub async fn push_failed(
    tx: &Transaction<'_>,
    first: i64,
    last: i64,
    attempts: u32,
    next_at: Timestamp,
    error: &str,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let n = tx
        .execute(
            &format!(
                "UPDATE push_state SET attempts = $3, next_attempt_at = $4, last_error = $5, \
                 last_error_at = $6 WHERE {PINNED}"
            ),
            &[
                &first,
                &last,
                &i64::from(attempts),
                &next_at.0,
                &error,
                &now.0,
            ],
        )
        .await?;
    Ok(n == 1)
}

/// The batch was undeliverable for `dead_after`: its changes are recorded in `push_parked`
/// (`items`: seq and the JSON as it was sent) and the cursor moves past them.
#[allow(clippy::too_many_arguments)]
pub async fn push_park(
    tx: &Transaction<'_>,
    first: i64,
    last: i64,
    since: Timestamp,
    attempts: u32,
    error: &str,
    items: &[(i64, String)],
    now: Timestamp,
) -> Result<bool, StoreError> {
    let n = tx
        .execute(
            &format!(
                "UPDATE push_state SET delivered_seq = GREATEST(delivered_seq, $2), \
                 batch_first = NULL, batch_last = NULL, batch_since = NULL, attempts = 0, \
                 next_attempt_at = NULL, last_error = $3, last_error_at = $4 WHERE {PINNED}"
            ),
            &[&first, &last, &error, &now.0],
        )
        .await?;
    if n == 0 {
        return Ok(false);
    }
    let ins = tx
        .prepare(
            "INSERT INTO push_parked (seq, parked_at, failing_since, attempts, last_error, item) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (seq) DO UPDATE SET parked_at = excluded.parked_at, \
             failing_since = excluded.failing_since, attempts = excluded.attempts, \
             last_error = excluded.last_error, item = excluded.item",
        )
        .await?;
    for (seq, item) in items {
        tx.execute(
            &ins,
            &[seq, &now.0, &since.0, &i64::from(attempts), &error, item],
        )
        .await?;
    }
    Ok(true)
}

/// `push replay --after SEQ`: every change after `after` is delivered again (under new
/// webhook-ids); parked changes after it are re-queued too.
pub async fn push_replay(
    tx: &Transaction<'_>,
    after: i64,
) -> Result<Result<u32, ReplayRefused>, StoreError> {
    let st = state(tx, true).await?;
    if after > st.delivered {
        return Ok(Err(ReplayRefused::PastCursor {
            delivered: st.delivered,
        }));
    }
    tx.execute(
        "UPDATE push_state SET delivered_seq = $1, batch_first = NULL, batch_last = NULL, \
         batch_since = NULL, attempts = 0, next_attempt_at = NULL, replays = replays + 1 \
         WHERE id = 1",
        &[&after],
    )
    .await?;
    tx.execute("DELETE FROM push_parked WHERE seq > $1", &[&after])
        .await?;
    Ok(Ok(st.replays + 1))
}

/// How many changes the feed holds after `after`, and the highest seq handed out so far.
pub async fn backlog(tx: &Transaction<'_>, after: i64) -> Result<(u64, i64), StoreError> {
    let row = tx
        .query_one(
            "SELECT (SELECT COUNT(*) FROM events WHERE change_seq > $1) \
                  + (SELECT COUNT(*) FROM feed_items WHERE seq > $1), \
                    COALESCE((SELECT value FROM counters WHERE name = 'change_seq'), 0)",
            &[&after],
        )
        .await?;
    let n: i64 = row.get(0);
    Ok((n.max(0) as u64, row.get(1)))
}

pub async fn push_status(tx: &Transaction<'_>) -> Result<PushStatusView, StoreError> {
    let st = push_state(tx).await?;
    let (backlog, last_seq) = backlog(tx, st.delivered).await?;
    let parked: i64 = tx
        .query_one("SELECT COUNT(*) FROM push_parked", &[])
        .await?
        .get(0);
    let recent_parked = tx
        .query(
            "SELECT seq, parked_at, failing_since, attempts, last_error, item FROM push_parked \
             ORDER BY parked_at DESC, seq DESC LIMIT 20",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            let item: String = r.get(5);
            ParkedView {
                seq: r.get(0),
                parked_at: Timestamp(r.get(1)),
                failing_since: Timestamp(r.get(2)),
                attempts: count32(r.get(3)),
                last_error: r.get(4),
                change: serde_json::from_str(&item).unwrap_or(serde_json::Value::Null),
            }
        })
        .collect();
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
