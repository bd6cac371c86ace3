//! The `tokens` table: configured tokens, their health and location, and the token list with
//! pending counts and last syncs.

use tokio_postgres::Transaction;

use super::feed::record_token_status;
use super::syncs::{sync_from_row, SYNC_COLS};
use super::ts;
use crate::core::SyncKind;
use crate::store::views::TokenView;
use crate::store::{StoreError, TokenRow, TokenStatus, UnhealthyToken};
use crate::time::Timestamp;

/// Records the configured tokens (keeping what syncs and health checks learned).
pub async fn upsert_tokens(
    tx: &Transaction<'_>,
    rows: &[TokenRow],
    now: Timestamp,
) -> Result<(), StoreError> {
    for t in rows {
        tx.execute(
            "INSERT INTO tokens (name, org_name, expires_at, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET org_name = excluded.org_name, \
             expires_at = excluded.expires_at, updated_at = excluded.updated_at",
            &[&t.name, &t.org_name, &t.expires_at.map(|t| t.0), &now.0],
        )
        .await?;
    }
    Ok(())
}

/// Token health as learned from Apple's answers, and a `token` feed item when `status`
/// differs from the token's last one (in the same transaction).
pub async fn set_token_health(
    tx: &Transaction<'_>,
    name: &str,
    health: &str,
    reason: Option<&str>,
    since: Timestamp,
    status: &TokenStatus,
) -> Result<(), StoreError> {
    record_token_status(tx, name, status, since).await?;
    tx.execute(
        "UPDATE tokens SET health = $2, health_reason = $3, \
         health_since = CASE WHEN health = $2 THEN COALESCE(health_since, $4) ELSE $4 END, \
         updated_at = $4 WHERE name = $1",
        &[&name, &health, &reason, &since.0],
    )
    .await?;
    Ok(())
}

/// Records what Client Config told us about a token's location (see the SQLite query of
/// the same name).
pub async fn set_token_location(
    tx: &Transaction<'_>,
    name: &str,
    uid: Option<&str>,
    location: Option<&str>,
    mdm_id: Option<&str>,
    conflict: Option<&str>,
) -> Result<(), StoreError> {
    let now = Timestamp::now();
    match conflict {
        Some(c) => {
            let status = TokenStatus::new("mdm_conflict", Some(c.to_string()));
            record_token_status(tx, name, &status, now).await?;
        }
        None => {
            let last_conflict = tx
                .query_opt(
                    "SELECT state FROM feed_items WHERE kind = 'token' AND token = $1 \
                     ORDER BY seq DESC LIMIT 1",
                    &[&name],
                )
                .await?
                .is_some_and(|r| r.get::<_, String>(0) == "mdm_conflict");
            let healthy = tx
                .query_opt("SELECT health FROM tokens WHERE name = $1", &[&name])
                .await?
                .is_some_and(|r| r.get::<_, String>(0) != "unhealthy");
            if last_conflict && healthy {
                record_token_status(tx, name, &TokenStatus::new("healthy", None), now).await?;
            }
        }
    }
    tx.execute(
        "UPDATE tokens SET uid = COALESCE($2, uid), location_name = COALESCE($3, location_name), \
         mdm_info = $4, mdm_conflict = $5 WHERE name = $1",
        &[&name, &uid, &location, &mdm_id, &conflict],
    )
    .await?;
    Ok(())
}

/// Tokens that are unhealthy or in an mdmInfo conflict, for `/healthz`.
pub async fn unhealthy_tokens(tx: &Transaction<'_>) -> Result<Vec<UnhealthyToken>, StoreError> {
    Ok(tx
        .query(
            "SELECT name, health, health_reason, mdm_conflict FROM tokens \
             WHERE health = 'unhealthy' OR mdm_conflict IS NOT NULL ORDER BY name",
            &[],
        )
        .await?
        .iter()
        .map(|r| UnhealthyToken {
            name: r.get(0),
            health: r.get(1),
            reason: r.get(2),
            mdm_conflict: r.get(3),
        })
        .collect())
}

pub async fn list_tokens(tx: &Transaction<'_>) -> Result<Vec<TokenView>, StoreError> {
    let mut tokens: Vec<TokenView> = tx
        .query(
            "SELECT name, uid, org_name, location_name, expires_at, health, health_reason, \
             health_since, mdm_conflict FROM tokens ORDER BY name",
            &[],
        )
        .await?
        .iter()
        .map(|r| TokenView {
            name: r.get(0),
            u_id: r.get(1),
            org_name: r.get(2),
            location: r.get(3),
            expires_at: ts(r.get(4)),
            health: r.get(5),
            health_reason: r.get(6),
            health_since: ts(r.get(7)),
            mdm_conflict: r.get(8),
            pending: 0,
            syncing: 0,
            last_syncs: vec![],
        })
        .collect();
    // Maintained by triggers (migration 6), not counted from the events table.
    let counts: Vec<(String, String, i64)> = tx
        .query(
            "SELECT token, state, SUM(n)::BIGINT FROM event_counts WHERE state != 'settled' \
             GROUP BY token, state",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    for t in &mut tokens {
        for (tok, state, n) in &counts {
            if tok == &t.name {
                match state.as_str() {
                    "pending" => t.pending = (*n).max(0) as u64,
                    "syncing" => t.syncing = (*n).max(0) as u64,
                    _ => {}
                }
            }
        }
        for kind in SyncKind::ALL {
            if let Some(r) = tx
                .query_opt(
                    &format!(
                        "SELECT {SYNC_COLS} FROM syncs WHERE token = $1 AND kind = $2 \
                         ORDER BY id DESC LIMIT 1"
                    ),
                    &[&t.name, &kind.as_str()],
                )
                .await?
            {
                t.last_syncs.push(sync_from_row(&r));
            }
        }
    }
    Ok(tokens)
}

/// Keeps the later of the stored and the given end of a Retry-After for `token`.
pub async fn record_pause(
    tx: &Transaction<'_>,
    token: &str,
    until: Timestamp,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE tokens SET paused_until = GREATEST(COALESCE(paused_until, 0), $2) \
         WHERE name = $1",
        &[&token, &until.0],
    )
    .await?;
    Ok(())
}

pub async fn paused_until(
    tx: &Transaction<'_>,
    token: &str,
) -> Result<Option<Timestamp>, StoreError> {
    Ok(tx
        .query_opt("SELECT paused_until FROM tokens WHERE name = $1", &[&token])
        .await?
        .and_then(|r| r.get::<_, Option<i64>>(0))
        .map(Timestamp))
}
