//! The changes feed (design §5, §10): events, token and licence items in one `seq` order.

use serde_json::{json, Map, Value};

use super::postgres::queries as pq;
use super::sqlite::queries as q;
use super::views::{ChangeView, FeedItem};
use super::{Store, StoreError};
use crate::time::Timestamp;

/// A token's health as the feed reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenStatus {
    /// healthy, expired, revoked, unauthorized, mdm_conflict, expiring_soon or unhealthy.
    pub health: String,
    pub reason: Option<String>,
    /// With `expiring_soon`: whole days left.
    pub days_left: Option<i64>,
    /// With `expiring_soon`: the warning threshold crossed (30, 7 or 1 days); a new item is
    /// written once per threshold, not every day.
    pub threshold: Option<u32>,
}

impl TokenStatus {
    pub fn new(health: &str, reason: Option<String>) -> TokenStatus {
        TokenStatus {
            health: health.to_string(),
            reason,
            days_left: None,
            threshold: None,
        }
    }

    /// The state a feed item records: the health, with the threshold when there is one.
    pub fn state(&self) -> String {
        match self.threshold {
            Some(t) => format!("{}:{t}", self.health),
            None => self.health.clone(),
        }
    }
}

/// An asset's counts before and after a change of the mirror.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LicenceCounts<'a> {
    pub adam_id: &'a str,
    pub pricing_param: &'a str,
    pub product_type: Option<&'a str>,
    /// `None`: the asset was not mirrored before.
    pub before: Option<i64>,
    pub available: i64,
    pub assigned: i64,
    pub total: i64,
}

/// The licence transition of a change of counts, if any: `available` when the available
/// count went from 0 to more, `exhausted` when it reached 0. An asset seen for the first
/// time is not a transition (nothing was known before).
pub fn licence_transition(before: Option<i64>, after: i64) -> Option<&'static str> {
    match before? {
        0 if after > 0 => Some("available"),
        b if b > 0 && after <= 0 => Some("exhausted"),
        _ => None,
    }
}

/// The fields of a `token` item (besides `seq` and `kind`), as every backend stores them.
pub fn token_item_body(token: &str, status: &TokenStatus, at: Timestamp) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("token".into(), json!(token));
    body.insert("health".into(), json!(status.health));
    if let Some(r) = &status.reason {
        body.insert("reason".into(), json!(r));
    }
    if let Some(d) = status.days_left {
        body.insert("daysLeft".into(), json!(d));
    }
    body.insert("at".into(), json!(at));
    body
}

/// The fields of a `licence` item for the transition `change` of `c`.
pub fn licence_item_body(
    token: &str,
    c: &LicenceCounts<'_>,
    change: &str,
    at: Timestamp,
) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("token".into(), json!(token));
    body.insert("adamId".into(), json!(c.adam_id));
    body.insert("pricingParam".into(), json!(c.pricing_param));
    if let Some(p) = c.product_type {
        body.insert("productType".into(), json!(p));
    }
    body.insert("change".into(), json!(change));
    body.insert("availableCount".into(), json!(c.available));
    body.insert("previousAvailableCount".into(), json!(c.before));
    body.insert("assignedCount".into(), json!(c.assigned));
    body.insert("totalCount".into(), json!(c.total));
    body.insert("at".into(), json!(at));
    body
}

/// A stored `feed_items` row (seq, kind, body) as an item of the feed.
pub fn stored_item(seq: i64, kind: &str, body: &str) -> Result<ChangeView, StoreError> {
    let fields = match serde_json::from_str::<Value>(body) {
        Ok(Value::Object(m)) => m,
        _ => {
            return Err(StoreError::Corrupt(format!(
                "feed item {seq} has a body that is not a JSON object"
            )))
        }
    };
    let item = match kind {
        "token" => FeedItem::Token(fields),
        "licence" => FeedItem::Licence(fields),
        other => {
            return Err(StoreError::Corrupt(format!(
                "feed item {seq} has the unknown kind {other:?}"
            )))
        }
    };
    Ok(ChangeView { seq, item })
}

/// The feed's first `limit` changes in `seq` order, from at most `limit` events and
/// `limit` items read in `seq` order each.
pub fn merge(mut changes: Vec<ChangeView>, limit: u32) -> Vec<ChangeView> {
    changes.sort_by_key(|c| c.seq);
    changes.truncate(limit as usize);
    changes
}

impl Store {
    /// At most `limit` changes with `seq > after`, in `seq` order.
    pub async fn changes_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<ChangeView>, StoreError> {
        match self {
            Store::Sqlite(s) => s.read(move |c| q::changes_after(c, after, limit)).await,
            Store::Postgres(p) => {
                p.read(move |tx| Box::pin(async move { pq::changes_after(tx, after, limit).await }))
                    .await
            }
        }
    }

    /// At most `limit` changes with `after < seq <= last`, in `seq` order.
    pub async fn changes_between(
        &self,
        after: i64,
        last: i64,
        limit: u32,
    ) -> Result<Vec<ChangeView>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.read(move |c| q::changes_between(c, after, last, limit))
                    .await
            }
            Store::Postgres(p) => {
                p.read(move |tx| {
                    Box::pin(async move { pq::changes_between(tx, after, last, limit).await })
                })
                .await
            }
        }
    }

    /// Writes a `token` feed item when the token's status differs from its last item;
    /// returns its seq.
    pub async fn record_token_status(
        &self,
        token: &str,
        status: TokenStatus,
        now: Timestamp,
    ) -> Result<Option<i64>, StoreError> {
        let token = token.to_string();
        match self {
            Store::Sqlite(s) => {
                s.write(move |c| q::record_token_status(c, &token, &status, now))
                    .await
            }
            Store::Postgres(p) => {
                p.write(move |tx| {
                    Box::pin(async move { pq::record_token_status(tx, &token, &status, now).await })
                })
                .await
            }
        }
    }
}
