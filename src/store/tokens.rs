//! Tokens as recorded: configuration, health, location, for inspection and the feed.

use super::feed::record_token_status;
use super::sql::{args, Tx};
use super::syncs::{abandon_running_syncs, sync_from_row, SYNC_COLS};
use super::views::TokenView;
use super::{Store, StoreError, TokenStatus};
use crate::core::SyncKind;
use crate::time::Timestamp;

/// A configured token as recorded for inspection.
#[derive(Clone, Debug, Default)]
pub struct TokenRow {
    pub name: String,
    pub org_name: Option<String>,
    pub expires_at: Option<Timestamp>,
}

/// A token that is not healthy: Apple refused it, or another MDM owns its location.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnhealthyToken {
    #[serde(skip)]
    pub name: String,
    pub health: String,
    pub reason: Option<String>,
    pub mdm_conflict: Option<String>,
}

impl Store {
    /// At start: records the configured tokens, marks the runs a previous process left
    /// running as abandoned, and discards every stage (no sync runs yet: staged rows are a
    /// crashed sync's, the mirror never saw them). One transaction. (One instance per
    /// PostgreSQL database for now: with several, the runs and stages of live instances
    /// must be left alone, issue 10.)
    pub async fn prepare_start(
        &self,
        tokens: Vec<TokenRow>,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.write(move |tx| {
            Box::pin(async move {
                upsert_tokens(tx, &tokens, now).await?;
                abandon_running_syncs(tx, now).await?;
                super::mirror::discard_all_stages(tx).await?;
                Ok(())
            })
        })
        .await
    }

    /// Records the configured tokens (after a reload).
    pub async fn upsert_tokens(
        &self,
        tokens: Vec<TokenRow>,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.write(move |tx| Box::pin(async move { upsert_tokens(tx, &tokens, now).await }))
            .await
    }

    /// Records a token's health (`healthy` / `unhealthy`, why, since when) and writes the
    /// feed item of `status` if it changed.
    pub async fn set_token_health(
        &self,
        token: &str,
        health: &'static str,
        reason: Option<String>,
        since: Timestamp,
        status: TokenStatus,
    ) -> Result<(), StoreError> {
        let token = token.to_string();
        self.write(move |tx| {
            Box::pin(async move {
                set_token_health(tx, &token, health, reason.as_deref(), since, &status).await
            })
        })
        .await
    }

    /// Records what Client Config told us about a token's location: its uId and name, the
    /// mdmInfo id now on it (`None`: no mdmInfo), and the ownership conflict the upkeep
    /// decided (`None` clears it). `mdm_conflict` is what `tokens` shows and `/healthz`
    /// reports as degraded.
    pub async fn set_token_location(
        &self,
        token: &str,
        uid: Option<String>,
        location: Option<String>,
        mdm_id: Option<String>,
        conflict: Option<String>,
    ) -> Result<(), StoreError> {
        let name = token.to_string();
        self.write(move |tx| {
            Box::pin(async move {
                let (uid, location) = (uid.as_deref(), location.as_deref());
                let (mdm_id, conflict) = (mdm_id.as_deref(), conflict.as_deref());
                set_token_location(tx, &name, uid, location, mdm_id, conflict).await
            })
        })
        .await
    }

    /// Tokens that are unhealthy or in an mdmInfo conflict, by name, for `/healthz`. Reads
    /// the small tokens table only.
    pub async fn unhealthy_tokens(&self) -> Result<Vec<UnhealthyToken>, StoreError> {
        self.read(|tx| Box::pin(unhealthy_tokens(tx))).await
    }

    /// Every token the store knows, by name, with its counts and last syncs.
    pub async fn list_tokens(&self) -> Result<Vec<TokenView>, StoreError> {
        self.read(|tx| Box::pin(list_tokens(tx))).await
    }
}

/// Token health as learned from Apple's answers, and a `token` feed item when `status`
/// differs from the token's last one (in the same transaction).
pub(crate) async fn set_token_health(
    tx: &mut dyn Tx,
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
        args![name, health, reason, since],
    )
    .await?;
    Ok(())
}

/// See [`Store::set_token_location`]: a conflict is a `mdm_conflict` item; its end is a
/// `healthy` one unless Apple refused the token meanwhile.
pub(crate) async fn set_token_location(
    tx: &mut dyn Tx,
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
            let last = tx
                .query_opt(
                    "SELECT state FROM feed_items WHERE kind = 'token' AND token = $1 \
                     ORDER BY seq DESC LIMIT 1",
                    args![name],
                )
                .await?;
            let health = tx
                .query_opt("SELECT health FROM tokens WHERE name = $1", args![name])
                .await?;
            let last_conflict = last.is_some_and(|r| r.str(0).is_ok_and(|s| s == "mdm_conflict"));
            let healthy = health.is_some_and(|r| r.str(0).is_ok_and(|h| h != "unhealthy"));
            if last_conflict && healthy {
                record_token_status(tx, name, &TokenStatus::new("healthy", None), now).await?;
            }
        }
    }
    tx.execute(
        "UPDATE tokens SET uid = COALESCE($2, uid), location_name = COALESCE($3, location_name), \
         mdm_info = $4, mdm_conflict = $5 WHERE name = $1",
        args![name, uid, location, mdm_id, conflict],
    )
    .await?;
    Ok(())
}

/// Tokens that are unhealthy or in an mdmInfo conflict, by name.
pub(crate) async fn unhealthy_tokens(tx: &mut dyn Tx) -> Result<Vec<UnhealthyToken>, StoreError> {
    let rows = tx
        .query(
            "SELECT name, health, health_reason, mdm_conflict FROM tokens \
             WHERE health = 'unhealthy' OR mdm_conflict IS NOT NULL ORDER BY name",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(UnhealthyToken {
                name: r.string(0)?,
                health: r.string(1)?,
                reason: r.opt_string(2)?,
                mdm_conflict: r.opt_string(3)?,
            })
        })
        .collect()
}

/// Records the configured tokens (keeping what syncs and health checks learned).
pub(crate) async fn upsert_tokens(
    tx: &mut dyn Tx,
    rows: &[TokenRow],
    now: Timestamp,
) -> Result<(), StoreError> {
    for t in rows {
        tx.execute(
            "INSERT INTO tokens (name, org_name, expires_at, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET org_name = excluded.org_name, \
             expires_at = excluded.expires_at, updated_at = excluded.updated_at",
            args![&t.name, &t.org_name, t.expires_at, now],
        )
        .await?;
    }
    Ok(())
}

pub(crate) async fn list_tokens(tx: &mut dyn Tx) -> Result<Vec<TokenView>, StoreError> {
    let rows = tx
        .query(
            "SELECT name, uid, org_name, location_name, expires_at, health, health_reason, \
             health_since, mdm_conflict FROM tokens ORDER BY name",
            &[],
        )
        .await?;
    let mut tokens = Vec::with_capacity(rows.len());
    for r in &rows {
        tokens.push(TokenView {
            name: r.string(0)?,
            u_id: r.opt_string(1)?,
            org_name: r.opt_string(2)?,
            location: r.opt_string(3)?,
            expires_at: r.opt_ts(4)?,
            health: r.string(5)?,
            health_reason: r.opt_string(6)?,
            health_since: r.opt_ts(7)?,
            mdm_conflict: r.opt_string(8)?,
            pending: 0,
            syncing: 0,
            last_syncs: vec![],
        });
    }
    // Maintained by triggers (migration 6), not counted from the events table.
    let counts = tx
        .query(
            "SELECT token, state, CAST(SUM(n) AS BIGINT) FROM event_counts \
             WHERE state != 'settled' GROUP BY token, state",
            &[],
        )
        .await?;
    let last_sync = format!(
        "SELECT {SYNC_COLS} FROM syncs WHERE token = $1 AND kind = $2 ORDER BY id DESC LIMIT 1"
    );
    for t in &mut tokens {
        for r in &counts {
            if r.str(0)? == t.name {
                match r.str(1)? {
                    "pending" => t.pending = r.u64(2)?,
                    "syncing" => t.syncing = r.u64(2)?,
                    _ => {}
                }
            }
        }
        for kind in SyncKind::ALL {
            if let Some(r) = tx
                .query_opt(&last_sync, args![&t.name, kind.as_str()])
                .await?
            {
                t.last_syncs.push(sync_from_row(&r)?);
            }
        }
    }
    Ok(tokens)
}

/// Keeps the later of the stored and the given end of a Retry-After for `token`.
pub(crate) async fn record_pause(
    tx: &mut dyn Tx,
    token: &str,
    until: Timestamp,
) -> Result<(), StoreError> {
    const PAUSE: super::sql::Sql = super::sql::Sql::pair(
        "UPDATE tokens SET paused_until = MAX(COALESCE(paused_until, 0), $2) WHERE name = $1",
        "UPDATE tokens SET paused_until = GREATEST(COALESCE(paused_until, 0), $2) WHERE name = $1",
    );
    tx.execute(PAUSE, args![token, until]).await?;
    Ok(())
}

pub(crate) async fn paused_until(
    tx: &mut dyn Tx,
    token: &str,
) -> Result<Option<Timestamp>, StoreError> {
    match tx
        .query_opt(
            "SELECT paused_until FROM tokens WHERE name = $1",
            args![token],
        )
        .await?
    {
        Some(r) => r.opt_ts(0),
        None => Ok(None),
    }
}
