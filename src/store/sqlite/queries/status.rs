//! What the status page (`GET /`, design §5 and §10) shows, read in one go. Every query is
//! bounded: unsettled events through the `events_unsettled` partial index, settled ones and
//! the hourly chart through range scans of time indexes (`events_settled`, and `polls_at`,
//! `syncs_started` from migration 4), failures and sync runs newest first by rowid with a
//! `LIMIT`. None reads the whole events, polls or syncs table.

use rusqlite::{params, Connection};

use super::syncs::{sync_from_row, SYNC_COLS};
use super::tokens::list_tokens;
use crate::store::status::{
    chart_start, HourBucket, RecentFailure, StateCount, StatusSnapshot, CHART_HOURS, HOUR_MS,
    RECENT_FAILURES, RECENT_SYNCS,
};
use crate::store::views::SyncView;
use crate::store::StoreError;
use crate::time::Timestamp;

const UNSETTLED_COUNTS: &str = "SELECT state, outcome, COUNT(*) FROM events \
     WHERE state != 'settled' GROUP BY 1, 2 ORDER BY 1, 2";
const SETTLED_COUNTS: &str = "SELECT 'settled', outcome, COUNT(*) FROM events \
     WHERE settled_at >= ?1 AND state = 'settled' GROUP BY 2 ORDER BY 2";
const FAILURES: &str = "SELECT f.event_id, e.token, f.at, f.source, f.error_number, \
     f.error_message FROM failures f LEFT JOIN events e ON e.event_id = f.event_id \
     ORDER BY f.id DESC LIMIT ?1";
const SETTLED_PER_HOUR: &str = "SELECT (settled_at - ?1) / 3600000, COUNT(*) FROM events \
     WHERE settled_at >= ?1 AND settled_at < ?2 GROUP BY 1";
const POLLS_PER_HOUR: &str =
    "SELECT (at - ?1) / 3600000, COUNT(*) FROM polls WHERE at >= ?1 AND at < ?2 GROUP BY 1";
const PAGES_PER_HOUR: &str = "SELECT (started_at - ?1) / 3600000, SUM(pages) FROM syncs \
     WHERE started_at >= ?1 AND started_at < ?2 GROUP BY 1";

/// Reads the status page's data as of `now`.
pub fn status_snapshot(conn: &Connection, now: Timestamp) -> Result<StatusSnapshot, StoreError> {
    let since = chart_start(now);
    let until = Timestamp(since.0 + CHART_HOURS as i64 * HOUR_MS);
    Ok(StatusSnapshot {
        tokens: list_tokens(conn)?,
        events: event_counts(conn, since)?,
        since,
        failures: recent_failures(conn, RECENT_FAILURES)?,
        syncs: recent_syncs(conn, RECENT_SYNCS)?,
        hours: hourly(conn, since, until)?,
        push: Some(super::push::push_status(conn)?),
    })
}

/// Unsettled events by state and outcome (all of them: the working set, read through the
/// `events_unsettled` partial index), and settled ones by outcome since `since` (a range of
/// `events_settled`).
pub fn event_counts(conn: &Connection, since: Timestamp) -> Result<Vec<StateCount>, StoreError> {
    let row = |r: &rusqlite::Row<'_>| {
        Ok(StateCount {
            state: r.get(0)?,
            outcome: r.get(1)?,
            count: r.get::<_, i64>(2)?.max(0) as u64,
        })
    };
    let mut out: Vec<StateCount> = conn
        .prepare_cached(UNSETTLED_COUNTS)?
        .query_map([], row)?
        .collect::<Result<_, _>>()?;
    let settled: Vec<StateCount> = conn
        .prepare_cached(SETTLED_COUNTS)?
        .query_map([since.0], row)?
        .collect::<Result<_, _>>()?;
    out.extend(settled);
    Ok(out)
}

/// The newest `limit` failures, with the token of their event.
pub fn recent_failures(conn: &Connection, limit: u32) -> Result<Vec<RecentFailure>, StoreError> {
    let rows = conn
        .prepare_cached(FAILURES)?
        .query_map([limit.clamp(1, 1000)], |r| {
            Ok(RecentFailure {
                event_id: r.get(0)?,
                token: r.get(1)?,
                at: Timestamp(r.get(2)?),
                source: r.get(3)?,
                error_number: r.get(4)?,
                error_message: r.get(5)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// The newest `limit` sync runs of every token.
pub fn recent_syncs(conn: &Connection, limit: u32) -> Result<Vec<SyncView>, StoreError> {
    let rows = conn
        .prepare_cached(&format!(
            "SELECT {SYNC_COLS} FROM syncs ORDER BY id DESC LIMIT ?1"
        ))?
        .query_map([limit.clamp(1, 1000)], sync_from_row)?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Per hour of `[since, until)`: events settled, polls made, sync pages fetched (by the hour
/// the run started). `since` is a whole hour.
pub fn hourly(
    conn: &Connection,
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
        let mut stmt = conn.prepare_cached(sql)?;
        let mut rows = stmt.query(params![since.0, until.0])?;
        while let Some(r) = rows.next()? {
            let i: i64 = r.get(0)?;
            let count: i64 = r.get::<_, Option<i64>>(1)?.unwrap_or(0);
            if let Some(b) = usize::try_from(i).ok().and_then(|i| hours.get_mut(i)) {
                set(b, count.max(0) as u64);
            }
        }
    }
    Ok(hours)
}

/// The page's queries with their parameters, for a test that reads their query plans.
#[cfg(test)]
pub(crate) fn planned() -> Vec<(&'static str, Vec<i64>)> {
    vec![
        (UNSETTLED_COUNTS, vec![]),
        (SETTLED_COUNTS, vec![1]),
        (FAILURES, vec![20]),
        (SETTLED_PER_HOUR, vec![1, 2]),
        (POLLS_PER_HOUR, vec![1, 2]),
        (PAGES_PER_HOUR, vec![1, 2]),
    ]
}
