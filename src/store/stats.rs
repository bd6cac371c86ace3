//! Counts the store answers at scrape time (`/metrics`): what the database knows, grouped,
//! so gauges computed from it can never drift from the store.

use std::collections::HashSet;

use super::postgres::queries as pq;
use super::sqlite::stats as q;
use super::{Store, StoreError};
use crate::time::Timestamp;

/// How many events are in one (token, state, outcome) group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventCount {
    pub token: String,
    pub state: String,
    /// `None` while the outcome is unknown.
    pub outcome: Option<String>,
    pub count: u64,
}

/// The expiry of a configured token's `.vpptoken`, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenExpiry {
    pub token: String,
    pub expires_at: Timestamp,
}

/// What the store knows at one instant, for the metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Ordered by token, state, outcome.
    pub events: Vec<EventCount>,
    /// Configured tokens with a known expiry, ordered by name.
    pub token_expiry: Vec<TokenExpiry>,
}

impl Store {
    /// One grouped count of the events, and the expiry of the tokens in `configured` (a
    /// token removed by a reload stays in the store but is not reported).
    pub async fn store_stats(&self, configured: HashSet<String>) -> Result<StoreStats, StoreError> {
        match self {
            Store::Sqlite(s) => s.read(move |c| q::store_stats(c, &configured)).await,
            Store::Postgres(p) => {
                p.read(move |tx| {
                    Box::pin(async move { pq::stats::store_stats(tx, &configured).await })
                })
                .await
            }
        }
    }
}
