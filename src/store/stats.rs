//! Counts the store answers at scrape time (`/metrics`): what the database knows, grouped,
//! so gauges computed from it can never drift from the store.

use std::collections::HashSet;

use rusqlite::Connection;

use super::StoreError;
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

/// One grouped count of the events, and the expiry of the tokens in `configured` (a token
/// removed by a reload stays in the table but is not reported).
pub fn store_stats(
    conn: &Connection,
    configured: &HashSet<String>,
) -> Result<StoreStats, StoreError> {
    let events = conn
        .prepare_cached(
            // Maintained by triggers (migration 6): a few rows, not a scan of the events.
            "SELECT token, state, outcome, n FROM event_counts WHERE n > 0 ORDER BY 1, 2, 3",
        )?
        .query_map([], |r| {
            let outcome: String = r.get(2)?;
            Ok(EventCount {
                token: r.get(0)?,
                state: r.get(1)?,
                outcome: (!outcome.is_empty()).then_some(outcome),
                count: r.get::<_, i64>(3)?.max(0) as u64,
            })
        })?
        .collect::<Result<_, _>>()?;
    let token_expiry = conn
        .prepare_cached(
            "SELECT name, expires_at FROM tokens WHERE expires_at IS NOT NULL ORDER BY name",
        )?
        .query_map([], |r| {
            Ok(TokenExpiry {
                token: r.get(0)?,
                expires_at: Timestamp(r.get(1)?),
            })
        })?
        .filter(|r| r.as_ref().map_or(true, |t| configured.contains(&t.token)))
        .collect::<Result<_, _>>()?;
    Ok(StoreStats {
        events,
        token_expiry,
    })
}
