//! What the status page (`GET /`, design §5 and §10) shows, read in one go; every backend
//! reads it with bounded queries (see the SQLite one).

use super::postgres::queries as pq;
use super::sqlite::queries::status as q;
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
        match self {
            Store::Sqlite(s) => s.read(move |c| q::status_snapshot(c, now)).await,
            Store::Postgres(p) => {
                p.read(move |tx| {
                    Box::pin(async move { pq::status::status_snapshot(tx, now).await })
                })
                .await
            }
        }
    }
}
