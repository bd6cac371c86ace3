//! The changes feed (README "Using it"): events, token and licence items in one `seq` order.

use serde_json::{json, Map, Value};

use super::postgres::queries as pq;
use super::sql::{args, Tx};
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
        self.write(move |tx| {
            Box::pin(async move { record_token_status(tx, &token, &status, now).await })
        })
        .await
    }
}

/// Takes the next feed sequence number. A counter of its own (not `MAX(change_seq)`), so a
/// number is never handed out twice, also after retention pruned the rows holding it; in
/// PostgreSQL its row stays locked until the transaction ends, so `seq` follows commit order
/// across transactions and instances.
pub(crate) async fn next_change_seq(tx: &mut dyn Tx) -> Result<i64, StoreError> {
    tx.query_one(
        "UPDATE counters SET value = value + 1 WHERE name = 'change_seq' RETURNING value",
        &[],
    )
    .await?
    .i64(0)
}

/// Writes a feed item of `kind` about `subject`, numbered from the counter.
async fn insert_item(
    tx: &mut dyn Tx,
    kind: &str,
    token: &str,
    subject: &str,
    state: &str,
    at: Timestamp,
    body: Map<String, Value>,
) -> Result<i64, StoreError> {
    let seq = next_change_seq(tx).await?;
    tx.execute(
        "INSERT INTO feed_items (seq, kind, token, subject, state, at, body) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        args![
            seq,
            kind,
            token,
            subject,
            state,
            at,
            Value::Object(body).to_string()
        ],
    )
    .await?;
    Ok(seq)
}

/// The state of the newest item about `subject`, if any.
async fn last_state(
    tx: &mut dyn Tx,
    kind: &str,
    token: &str,
    subject: &str,
) -> Result<Option<String>, StoreError> {
    match tx
        .query_opt(
            "SELECT state FROM feed_items WHERE kind = $1 AND token = $2 AND subject = $3 \
             ORDER BY seq DESC LIMIT 1",
            args![kind, token, subject],
        )
        .await?
    {
        Some(r) => r.string(0).map(Some),
        None => Ok(None),
    }
}

/// Writes a `token` feed item when the token's status differs from its last item. A first
/// `healthy` is not a change (nothing was reported before). Returns the item's seq.
pub(crate) async fn record_token_status(
    tx: &mut dyn Tx,
    token: &str,
    status: &TokenStatus,
    at: Timestamp,
) -> Result<Option<i64>, StoreError> {
    let state = status.state();
    let last = last_state(tx, "token", token, token).await?;
    if last.as_deref() == Some(state.as_str()) || (last.is_none() && status.health == "healthy") {
        return Ok(None);
    }
    let body = token_item_body(token, status, at);
    insert_item(tx, "token", token, token, &state, at, body)
        .await
        .map(Some)
}

/// Writes a `licence` feed item when `c` is a transition (see [`licence_transition`]).
#[allow(dead_code)] // the mirror's, once written once (the next step)
pub(crate) async fn record_licence_counts(
    tx: &mut dyn Tx,
    token: &str,
    c: &LicenceCounts<'_>,
    at: Timestamp,
) -> Result<Option<i64>, StoreError> {
    let Some(change) = licence_transition(c.before, c.available) else {
        return Ok(None);
    };
    let subject = format!("{}/{}", c.adam_id, c.pricing_param);
    let body = licence_item_body(token, c, change, at);
    insert_item(tx, "licence", token, &subject, change, at, body)
        .await
        .map(Some)
}
