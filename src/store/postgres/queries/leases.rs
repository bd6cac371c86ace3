//! The `instances` and `leases` tables (issue 10): heartbeats and token leases, every time
//! on the database's clock ([`DB_NOW`]) so instances with skewed clocks agree on expiry.

use std::collections::BTreeSet;

use tokio_postgres::Transaction;

use crate::cluster::lease::Lease;
use crate::store::StoreError;
use crate::time::Timestamp;

/// The server's time in Unix milliseconds (the transaction's start: one value per write).
const DB_NOW: &str = "(extract(epoch from now()) * 1000)::bigint";

fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub async fn heartbeat(tx: &Transaction<'_>, me: &str) -> Result<(), StoreError> {
    tx.execute(
        &format!(
            "INSERT INTO instances (id, started_at, last_seen) VALUES ($1, {DB_NOW}, {DB_NOW}) \
             ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen"
        ),
        &[&me],
    )
    .await?;
    Ok(())
}

/// The database's now, the instances seen within `ttl`, and every lease row.
pub async fn lease_snapshot(
    tx: &Transaction<'_>,
    ttl: std::time::Duration,
) -> Result<(Timestamp, BTreeSet<String>, Vec<Lease>), StoreError> {
    let now: i64 = tx.query_one(&format!("SELECT {DB_NOW}"), &[]).await?.get(0);
    let live = tx
        .query(
            "SELECT id FROM instances WHERE last_seen > $1",
            &[&now.saturating_sub(ms(ttl))],
        )
        .await?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    let leases = tx
        .query("SELECT token, holder, expires_at FROM leases", &[])
        .await?
        .into_iter()
        .map(|r| Lease {
            token: r.get(0),
            holder: r.get(1),
            expires_at: Timestamp(r.get(2)),
        })
        .collect();
    Ok((Timestamp(now), live, leases))
}

/// Every instance row: its id and last heartbeat, by id.
pub async fn instances_seen(tx: &Transaction<'_>) -> Result<Vec<(String, Timestamp)>, StoreError> {
    Ok(tx
        .query("SELECT id, last_seen FROM instances ORDER BY id", &[])
        .await?
        .into_iter()
        .map(|r| (r.get(0), Timestamp(r.get(1))))
        .collect())
}

/// Takes `token` if it is free, expired or already ours: one conditional write, so of two
/// instances racing for it at most one wins.
pub async fn acquire(
    tx: &Transaction<'_>,
    me: &str,
    token: &str,
    ttl: std::time::Duration,
) -> Result<bool, StoreError> {
    let row = tx
        .query_opt(
            &format!(
                "INSERT INTO leases (token, holder, expires_at) VALUES ($1, $2, {DB_NOW} + $3) \
                 ON CONFLICT (token) DO UPDATE SET holder = excluded.holder, \
                 expires_at = excluded.expires_at \
                 WHERE leases.expires_at <= {DB_NOW} OR leases.holder = excluded.holder \
                 RETURNING token"
            ),
            &[&token, &me, &ms(ttl)],
        )
        .await?;
    Ok(row.is_some())
}

/// Extends the unexpired leases of `me` among `tokens`; answers the ones extended.
pub async fn renew(
    tx: &Transaction<'_>,
    me: &str,
    tokens: &[String],
    ttl: std::time::Duration,
) -> Result<Vec<String>, StoreError> {
    Ok(tx
        .query(
            &format!(
                "UPDATE leases SET expires_at = {DB_NOW} + $3 \
                 WHERE holder = $1 AND token = ANY($2) AND expires_at > {DB_NOW} \
                 RETURNING token"
            ),
            &[&me, &tokens, &ms(ttl)],
        )
        .await?
        .into_iter()
        .map(|r| r.get(0))
        .collect())
}

pub async fn release(tx: &Transaction<'_>, me: &str, tokens: &[String]) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM leases WHERE holder = $1 AND token = ANY($2)",
        &[&me, &tokens],
    )
    .await?;
    Ok(())
}

pub async fn leave(tx: &Transaction<'_>, me: &str) -> Result<(), StoreError> {
    tx.execute("DELETE FROM leases WHERE holder = $1", &[&me])
        .await?;
    tx.execute("DELETE FROM instances WHERE id = $1", &[&me])
        .await?;
    Ok(())
}
