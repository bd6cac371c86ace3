//! Counts the store answers at scrape time (`/metrics`): what the database knows, grouped,
//! so gauges computed from it can never drift from the store.

use std::collections::HashSet;

use rusqlite::Connection;

use crate::store::{EventCount, StoreError, StoreStats, TokenExpiry};
use crate::time::Timestamp;

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
