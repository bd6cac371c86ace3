//! Tokens as recorded: configuration, health, location, for inspection and the feed.

use super::postgres::{mirror as pm, queries as pq};
use super::sqlite::{mirror, queries as q};
use super::views::TokenView;
use super::{Store, StoreError, TokenStatus};
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
    /// crashed sync's, the mirror never saw them). One transaction.
    pub async fn prepare_start(
        &self,
        tokens: Vec<TokenRow>,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.write(move |c| {
                    q::upsert_tokens(c, &tokens, now)?;
                    q::abandon_running_syncs(c, now)?;
                    mirror::discard_all_stages(c)?;
                    Ok(())
                })
                .await
            }
            Store::Postgres(p) => {
                // One instance per database for now: with several, the runs and stages of
                // live instances must be left alone (issue 10).
                p.write(move |tx| {
                    Box::pin(async move {
                        pq::upsert_tokens(tx, &tokens, now).await?;
                        pq::abandon_running_syncs(tx, now).await?;
                        pm::discard_all_stages(tx).await?;
                        Ok(())
                    })
                })
                .await
            }
        }
    }

    /// Records the configured tokens (after a reload).
    pub async fn upsert_tokens(
        &self,
        tokens: Vec<TokenRow>,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.write(move |c| q::upsert_tokens(c, &tokens, now)).await,
            Store::Postgres(p) => {
                p.write(move |tx| {
                    Box::pin(async move { pq::upsert_tokens(tx, &tokens, now).await })
                })
                .await
            }
        }
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
        match self {
            Store::Sqlite(s) => {
                s.write(move |c| {
                    q::set_token_health(c, &token, health, reason.as_deref(), since, &status)
                })
                .await
            }
            Store::Postgres(p) => {
                p.write(move |tx| {
                    Box::pin(async move {
                        let reason = reason.as_deref();
                        pq::set_token_health(tx, &token, health, reason, since, &status).await
                    })
                })
                .await
            }
        }
    }

    /// Records what Client Config says of a token's location, and the MDM conflict if any.
    pub async fn set_token_location(
        &self,
        token: &str,
        uid: Option<String>,
        location: Option<String>,
        mdm_id: Option<String>,
        conflict: Option<String>,
    ) -> Result<(), StoreError> {
        let token = token.to_string();
        match self {
            Store::Sqlite(s) => {
                s.write(move |c| {
                    q::set_token_location(
                        c,
                        &token,
                        uid.as_deref(),
                        location.as_deref(),
                        mdm_id.as_deref(),
                        conflict.as_deref(),
                    )
                })
                .await
            }
            Store::Postgres(p) => {
                p.write(move |tx| {
                    Box::pin(async move {
                        pq::set_token_location(
                            tx,
                            &token,
                            uid.as_deref(),
                            location.as_deref(),
                            mdm_id.as_deref(),
                            conflict.as_deref(),
                        )
                        .await
                    })
                })
                .await
            }
        }
    }

    /// Tokens that are not healthy, by name.
    pub async fn unhealthy_tokens(&self) -> Result<Vec<UnhealthyToken>, StoreError> {
        match self {
            Store::Sqlite(s) => s.read(q::unhealthy_tokens).await,
            Store::Postgres(p) => p.read(|tx| Box::pin(pq::unhealthy_tokens(tx))).await,
        }
    }

    /// Every token the store knows, by name, with its counts and last syncs.
    pub async fn list_tokens(&self) -> Result<Vec<TokenView>, StoreError> {
        match self {
            Store::Sqlite(s) => s.read(q::list_tokens).await,
            Store::Postgres(p) => p.read(|tx| Box::pin(pq::list_tokens(tx))).await,
        }
    }
}
