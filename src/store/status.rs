//! What the status page (`GET /`, README "Using it") shows, read in one go. Every query is
//! bounded: unsettled events through the `events_unsettled` partial index, settled ones and
//! the hourly chart through range scans of time indexes (`events_settled`, and `polls_at`,
//! `syncs_started` from migration 4), failures and sync runs newest first by id with a
//! `LIMIT`. None reads the whole events, polls or syncs table.

use super::sql::{args, Native, Row, Tx};
use super::syncs::{sync_from_row, SYNC_COLS};
use super::tokens::list_tokens;
use super::views::{SyncView, TokenView};
use super::{Store, StoreError};
use crate::time::Timestamp;

/// One hour in milliseconds.
pub const HOUR_MS: i64 = 3_600_000;

/// Hours shown in the chart.
pub const CHART_HOURS: usize = 24;

/// Failures shown.
pub const RECENT_FAILURES: u32 = 20;

/// Sync runs shown.
pub const RECENT_SYNCS: u32 = 10;

/// How many events are in one (state, outcome) group. Unsettled groups count every
/// unsettled event; the settled groups count those settled since [`StatusSnapshot::since`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateCount {
    pub state: String,
    /// `None` while the outcome is unknown.
    pub outcome: Option<String>,
    pub count: u64,
}

/// One failure Apple reported for an event (the `failures` table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecentFailure {
    pub event_id: String,
    /// `None` if the event row is gone.
    pub token: Option<String>,
    pub at: Timestamp,
    /// Where it was learned: notification, poll, ...
    pub source: String,
    pub error_number: i64,
    pub error_message: String,
}

/// One hour of the chart: `[start, start + 1h)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HourBucket {
    pub start: Timestamp,
    /// Events settled in that hour.
    pub settled: u64,
    /// Event Status calls recorded (`polls` rows).
    pub polls: u64,
    /// Pages fetched by sync runs started in that hour.
    pub sync_pages: u64,
}

impl HourBucket {
    /// Apple calls as far as the store knows them: Event Status polls plus sync pages.
    pub fn apple_calls(&self) -> u64 {
        self.polls + self.sync_pages
    }
}

/// Everything the status page shows, as of one read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatusSnapshot {
    /// Every token the store knows, ordered by name (the caller keeps the configured ones).
    pub tokens: Vec<TokenView>,
    /// Ordered by state, outcome.
    pub events: Vec<StateCount>,
    /// Start of the window of the settled counts and of the chart (a whole hour).
    pub since: Timestamp,
    /// Newest first.
    pub failures: Vec<RecentFailure>,
    /// Newest first.
    pub syncs: Vec<SyncView>,
    /// [`CHART_HOURS`] buckets, oldest first, the last one holding `now`.
    pub hours: Vec<HourBucket>,
    /// The push outbox (shown only when push is configured).
    pub push: Option<super::push::PushStatusView>,
}

/// The first hour of the chart for `now`: the whole hour 23 hours before the current one.
pub fn chart_start(now: Timestamp) -> Timestamp {
    Timestamp(now.0.div_euclid(HOUR_MS) * HOUR_MS - (CHART_HOURS as i64 - 1) * HOUR_MS)
}

impl Store {
    /// Everything the status page shows as of `now`.
    pub async fn status_snapshot(&self, now: Timestamp) -> Result<StatusSnapshot, StoreError> {
        self.read(move |tx| Box::pin(status_snapshot(tx, now)))
            .await
    }
}

// NULLS FIRST: SQLite's order (where NULL sorts first anyway) in PostgreSQL too.
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
const PAGES_PER_HOUR: &str = "SELECT (started_at - $1) / 3600000, CAST(SUM(pages) AS BIGINT) \
     FROM syncs WHERE started_at >= $1 AND started_at < $2 GROUP BY 1";

pub(crate) async fn status_snapshot(
    tx: &mut dyn Tx,
    now: Timestamp,
) -> Result<StatusSnapshot, StoreError> {
    let since = chart_start(now);
    let until = Timestamp(since.0 + CHART_HOURS as i64 * HOUR_MS);
    let push = match tx.native() {
        Native::Sqlite(c) => super::sqlite::queries::push_status(c)?,
        Native::Postgres(t) => super::postgres::queries::push_status(t).await?,
    };
    Ok(StatusSnapshot {
        tokens: list_tokens(tx).await?,
        events: event_counts(tx, since).await?,
        since,
        failures: recent_failures(tx, RECENT_FAILURES).await?,
        syncs: recent_syncs(tx, RECENT_SYNCS).await?,
        hours: hourly(tx, since, until).await?,
        push: Some(push),
    })
}

fn state_count(r: &Row) -> Result<StateCount, StoreError> {
    Ok(StateCount {
        state: r.string(0)?,
        outcome: r.opt_string(1)?,
        count: r.u64(2)?,
    })
}

/// Unsettled events by state and outcome (all of them: the working set, read through the
/// `events_unsettled` partial index), and settled ones by outcome since `since` (a range of
/// `events_settled`).
pub(crate) async fn event_counts(
    tx: &mut dyn Tx,
    since: Timestamp,
) -> Result<Vec<StateCount>, StoreError> {
    let mut rows = tx.query(UNSETTLED_COUNTS, &[]).await?;
    rows.extend(tx.query(SETTLED_COUNTS, args![since]).await?);
    rows.iter().map(state_count).collect()
}

/// The newest `limit` failures, with the token of their event.
pub(crate) async fn recent_failures(
    tx: &mut dyn Tx,
    limit: u32,
) -> Result<Vec<RecentFailure>, StoreError> {
    let rows = tx.query(FAILURES, args![limit.clamp(1, 1000)]).await?;
    rows.iter()
        .map(|r| {
            Ok(RecentFailure {
                event_id: r.string(0)?,
                token: r.opt_string(1)?,
                at: r.ts(2)?,
                source: r.string(3)?,
                error_number: r.i64(4)?,
                error_message: r.string(5)?,
            })
        })
        .collect()
}

/// The newest `limit` sync runs of every token.
pub(crate) async fn recent_syncs(tx: &mut dyn Tx, limit: u32) -> Result<Vec<SyncView>, StoreError> {
    let sql = format!("SELECT {SYNC_COLS} FROM syncs ORDER BY id DESC LIMIT $1");
    let rows = tx.query(&sql, args![limit.clamp(1, 1000)]).await?;
    rows.iter().map(sync_from_row).collect()
}

/// Per hour of `[since, until)`: events settled, polls made, sync pages fetched (by the hour
/// the run started). `since` is a whole hour.
pub(crate) async fn hourly(
    tx: &mut dyn Tx,
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
        for r in tx.query(sql, args![since, until]).await? {
            let i = r.i64(0)?;
            let count = r.opt_i64(1)?.unwrap_or(0);
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
