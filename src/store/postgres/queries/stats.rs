//! Counts the store answers at scrape time (`/metrics`).

use std::collections::HashSet;

use tokio_postgres::Transaction;

use crate::store::{EventCount, StoreError, StoreStats, TokenExpiry};
use crate::time::Timestamp;

/// One grouped count of the events, and the expiry of the tokens in `configured`.
pub async fn store_stats(
    tx: &Transaction<'_>,
    configured: &HashSet<String>,
) -> Result<StoreStats, StoreError> {
    let events = tx
        .query(
            // Maintained by triggers (migration 6): a few rows, not a scan of the events.
            "SELECT token, state, outcome, n FROM event_counts WHERE n > 0 ORDER BY 1, 2, 3",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            let outcome: String = r.get(2);
            EventCount {
                token: r.get(0),
                state: r.get(1),
                outcome: (!outcome.is_empty()).then_some(outcome),
                count: r.get::<_, i64>(3).max(0) as u64,
            }
        })
        .collect();
    let token_expiry = tx
        .query(
            "SELECT name, expires_at FROM tokens WHERE expires_at IS NOT NULL ORDER BY name",
            &[],
        )
        .await?
        .iter()
        .map(|r| TokenExpiry {
            token: r.get(0),
            expires_at: Timestamp(r.get(1)),
        })
        .filter(|t| configured.contains(&t.token))
        .collect();
    Ok(StoreStats {
        events,
        token_expiry,
    })
}
