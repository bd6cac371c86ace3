//! What the status page shows, read in one go, every query bounded by an index as in
//! SQLite's (`store::sqlite::queries::status`).

use tokio_postgres::{Row, Transaction};

use super::syncs::{sync_from_row, SYNC_COLS};
use super::tokens::list_tokens;
use crate::store::status::{
    chart_start, HourBucket, RecentFailure, StateCount, StatusSnapshot, CHART_HOURS, HOUR_MS,
    RECENT_FAILURES, RECENT_SYNCS,
};
use crate::store::views::SyncView;
use crate::store::StoreError;
use crate::time::Timestamp;

// NULLS FIRST: SQLite's order, where NULL sorts before any value.
const UNSETTLED_COUNTS: &str = "SELECT state, outcome, COUNT(*) FROM events \
     WHERE state != 'settled' GROUP BY 1, 2 ORDER BY 1, 2 NULLS FIRST";
const SETTLED_COUNTS: &str = "SELECT 'settled', outcome, COUNT(*) FROM events \
     WHERE settled_at >= $1 AND state = 'settled' GROUP BY 2 ORDER BY 2 NULLS FIRST";
const FAILURES: &str = "SELECT f.event_id, e.token, f.at, f.source, f.error_number, \
     f.error_message FROM failures f LEFT JOIN events e ON e.event_id = f.event_id \
     ORDER BY f.id DESC LIMIT $1";
const SETTLED_PER_HOUR: &str = "SELECT (settled_at - $1) / 3600000, COUNT(*) FROM events \
     WHERE settled_at >= $1 AND settled_at < $2 GROUP BY 1";
const POLLS_PER_HOUR: &str =
    "SELECT (at - $1) / 3600000, COUNT(*) FROM polls WHERE at >= $1 AND at < $2 GROUP BY 1";
const PAGES_PER_HOUR: &str = "SELECT (started_at - $1) / 3600000, SUM(pages)::BIGINT FROM syncs \
     WHERE started_at >= $1 AND started_at < $2 GROUP BY 1";

/// Reads the status page's data as of `now`.
pub async fn status_snapshot(
    tx: &Transaction<'_>,
    now: Timestamp,
) -> Result<StatusSnapshot, StoreError> {
    let since = chart_start(now);
    let until = Timestamp(since.0 + CHART_HOURS as i64 * HOUR_MS);
    Ok(StatusSnapshot {
        tokens: list_tokens(tx).await?,
        events: event_counts(tx, since).await?,
        since,
        failures: recent_failures(tx, RECENT_FAILURES).await?,
        syncs: recent_syncs(tx, RECENT_SYNCS).await?,
        hours: hourly(tx, since, until).await?,
        push: Some(super::push::push_status(tx).await?),
    })
}

fn state_count(r: &Row) -> StateCount {
    StateCount {
        state: r.get(0),
        outcome: r.get(1),
        count: r.get::<_, i64>(2).max(0) as u64,
    }
}

/// Unsettled events by state and outcome, and settled ones by outcome since `since`.
pub async fn event_counts(
    tx: &Transaction<'_>,
    since: Timestamp,
) -> Result<Vec<StateCount>, StoreError> {
    let mut out: Vec<StateCount> = tx
        .query(UNSETTLED_COUNTS, &[])
        .await?
        .iter()
        .map(state_count)
        .collect();
    out.extend(
        tx.query(SETTLED_COUNTS, &[&since.0])
            .await?
            .iter()
            .map(state_count),
    );
    Ok(out)
}

/// The newest `limit` failures, with the token of their event.
pub async fn recent_failures(
    tx: &Transaction<'_>,
    limit: u32,
) -> Result<Vec<RecentFailure>, StoreError> {
    Ok(tx
        .query(FAILURES, &[&i64::from(limit.clamp(1, 1000))])
        .await?
        .iter()
        .map(|r| RecentFailure {
            event_id: r.get(0),
            token: r.get(1),
            at: Timestamp(r.get(2)),
            source: r.get(3),
            error_number: r.get(4),
            error_message: r.get(5),
        })
        .collect())
}

/// The newest `limit` sync runs of every token.
pub async fn recent_syncs(tx: &Transaction<'_>, limit: u32) -> Result<Vec<SyncView>, StoreError> {
    Ok(tx
        .query(
            &format!("SELECT {SYNC_COLS} FROM syncs ORDER BY id DESC LIMIT $1"),
            &[&i64::from(limit.clamp(1, 1000))],
        )
        .await?
        .iter()
        .map(sync_from_row)
        .collect())
}

/// Per hour of `[since, until)`: events settled, polls made, sync pages fetched (by the hour
/// the run started). `since` is a whole hour.
pub async fn hourly(
    tx: &Transaction<'_>,
    since: Timestamp,
    until: Timestamp,
) -> Result<Vec<HourBucket>, StoreError> {
    let n = ((until.0 - since.0) / HOUR_MS).clamp(0, 24 * 31) as usize;
    let mut hours: Vec<HourBucket> = (0..n)
        .map(|i| HourBucket {
            start: Timestamp(since.0 + i as i64 * HOUR_MS),
            ..Default::default()
        })
        .collect();
    type Set = fn(&mut HourBucket, u64);
    let queries: [(&str, Set); 3] = [
        (SETTLED_PER_HOUR, |b, n| b.settled = n),
        (POLLS_PER_HOUR, |b, n| b.polls = n),
        (PAGES_PER_HOUR, |b, n| b.sync_pages = n),
    ];
    for (sql, set) in queries {
        for r in tx.query(sql, &[&since.0, &until.0]).await? {
            let i: i64 = r.get(0);
            let count: i64 = r.get::<_, Option<i64>>(1).unwrap_or(0);
            if let Some(b) = usize::try_from(i).ok().and_then(|i| hours.get_mut(i)) {
                set(b, count.max(0) as u64);
            }
        }
    }
    Ok(hours)
}
