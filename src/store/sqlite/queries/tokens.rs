//! The `tokens` table: configured tokens, their health and location, and the token list with
//! pending counts and last syncs.

use rusqlite::{params, Connection, OptionalExtension};

use super::feed::record_token_status;
use super::syncs::{sync_from_row, SYNC_COLS};
use super::ts;
use crate::core::SyncKind;
use crate::store::views::TokenView;
use crate::store::{StoreError, TokenRow, TokenStatus, UnhealthyToken};
use crate::time::Timestamp;

/// Records the configured tokens (keeping what syncs and health checks learned).
pub fn upsert_tokens(
    conn: &Connection,
    rows: &[TokenRow],
    now: Timestamp,
) -> Result<(), StoreError> {
    for t in rows {
        conn.execute(
            "INSERT INTO tokens (name, org_name, expires_at, updated_at) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT(name) DO UPDATE SET org_name = excluded.org_name, \
             expires_at = excluded.expires_at, updated_at = excluded.updated_at",
            params![t.name, t.org_name, t.expires_at.map(|t| t.0), now.0],
        )?;
    }
    Ok(())
}

/// Token health as learned from Apple's answers, and a `token` feed item when `status`
/// differs from the token's last one (in the same transaction).
pub fn set_token_health(
    conn: &Connection,
    name: &str,
    health: &str,
    reason: Option<&str>,
    since: Timestamp,
    status: &TokenStatus,
) -> Result<(), StoreError> {
    record_token_status(conn, name, status, since)?;
    conn.execute(
        "UPDATE tokens SET health = ?2, health_reason = ?3, \
         health_since = CASE WHEN health = ?2 THEN COALESCE(health_since, ?4) ELSE ?4 END, \
         updated_at = ?4 WHERE name = ?1",
        params![name, health, reason, since.0],
    )?;
    Ok(())
}

/// Records what Client Config told us about a token's location: its uId and name, the mdmInfo
/// id now on it (`None`: no mdmInfo), and the ownership conflict the upkeep decided
/// (`None` clears it). `mdm_conflict` is what `tokens` shows and `/healthz` reports as degraded.
pub fn set_token_location(
    conn: &Connection,
    name: &str,
    uid: Option<&str>,
    location: Option<&str>,
    mdm_id: Option<&str>,
    conflict: Option<&str>,
) -> Result<(), StoreError> {
    let conflict = conflict.map(str::to_string);
    let now = Timestamp::now();
    match &conflict {
        Some(c) => {
            record_token_status(
                conn,
                name,
                &TokenStatus::new("mdm_conflict", Some(c.clone())),
                now,
            )?;
        }
        None => {
            let last_conflict = conn
                .query_row(
                    "SELECT state FROM feed_items WHERE kind = 'token' AND token = ?1 \
                     ORDER BY seq DESC LIMIT 1",
                    [name],
                    |r| r.get::<_, String>(0),
                )
                .optional()?
                .is_some_and(|s| s == "mdm_conflict");
            let healthy = conn
                .query_row("SELECT health FROM tokens WHERE name = ?1", [name], |r| {
                    r.get::<_, String>(0)
                })
                .optional()?
                .is_some_and(|h| h != "unhealthy");
            if last_conflict && healthy {
                record_token_status(conn, name, &TokenStatus::new("healthy", None), now)?;
            }
        }
    }
    conn.execute(
        "UPDATE tokens SET uid = COALESCE(?2, uid), location_name = COALESCE(?3, location_name), \
         mdm_info = ?4, mdm_conflict = ?5 WHERE name = ?1",
        params![name, uid, location, mdm_id, conflict],
    )?;
    Ok(())
}

/// Tokens that are unhealthy or in an mdmInfo conflict, for `/healthz`. Reads the small
/// tokens table only.
pub fn unhealthy_tokens(conn: &Connection) -> Result<Vec<UnhealthyToken>, StoreError> {
    let rows = conn
        .prepare_cached(
            "SELECT name, health, health_reason, mdm_conflict FROM tokens \
             WHERE health = 'unhealthy' OR mdm_conflict IS NOT NULL ORDER BY name",
        )?
        .query_map([], |r| {
            Ok(UnhealthyToken {
                name: r.get(0)?,
                health: r.get(1)?,
                reason: r.get(2)?,
                mdm_conflict: r.get(3)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

pub fn list_tokens(conn: &Connection) -> Result<Vec<TokenView>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT name, uid, org_name, location_name, expires_at, health, health_reason, \
         health_since, mdm_conflict FROM tokens ORDER BY name",
    )?;
    let mut tokens: Vec<TokenView> = stmt
        .query_map([], |r| {
            Ok(TokenView {
                name: r.get(0)?,
                u_id: r.get(1)?,
                org_name: r.get(2)?,
                location: r.get(3)?,
                expires_at: ts(r.get(4)?),
                health: r.get(5)?,
                health_reason: r.get(6)?,
                health_since: ts(r.get(7)?),
                mdm_conflict: r.get(8)?,
                pending: 0,
                syncing: 0,
                last_syncs: vec![],
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut counts = conn.prepare(
        // Maintained by triggers (migration 6), not counted from the events table.
        "SELECT token, state, SUM(n) FROM event_counts WHERE state != 'settled' GROUP BY token, state",
    )?;
    let rows: Vec<(String, String, u64)> = counts
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    for t in &mut tokens {
        for (tok, state, n) in &rows {
            if tok == &t.name {
                match state.as_str() {
                    "pending" => t.pending = *n,
                    "syncing" => t.syncing = *n,
                    _ => {}
                }
            }
        }
        for kind in SyncKind::ALL {
            if let Some(s) = conn
                .query_row(
                    &format!(
                        "SELECT {SYNC_COLS} FROM syncs WHERE token = ?1 AND kind = ?2 ORDER BY id DESC LIMIT 1"
                    ),
                    params![t.name, kind.as_str()],
                    sync_from_row,
                )
                .optional()?
            {
                t.last_syncs.push(s);
            }
        }
    }
    Ok(tokens)
}

/// Keeps the later of the stored and the given end of a Retry-After for `token`.
pub fn record_pause(conn: &Connection, token: &str, until: Timestamp) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE tokens SET paused_until = MAX(COALESCE(paused_until, 0), ?2) WHERE name = ?1",
        params![token, until.0],
    )?;
    Ok(())
}

pub fn paused_until(conn: &Connection, token: &str) -> Result<Option<Timestamp>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT paused_until FROM tokens WHERE name = ?1",
            [token],
            |r| r.get::<_, Option<i64>>(0),
        )
        .optional()?
        .flatten()
        .map(Timestamp))
}
