//! The changes feed: the token and licence items that share the `change_seq` counter with
//! events (`feed_items`), and reading the feed in `seq` order. The counter's row lock makes
//! the numbers follow commit order also when several transactions, or instances, write.

use serde_json::{Map, Value};
use tokio_postgres::Transaction;

use super::events::{event_at, next_change_seq, view_from_record, EVENT_COLS};
use crate::core::EventRecord;
use crate::store::feed::{licence_item_body, merge, stored_item};
use crate::store::views::{ChangeView, FeedItem};
use crate::store::{licence_transition, LicenceCounts, StoreError};
use crate::time::Timestamp;

async fn insert_item(
    tx: &Transaction<'_>,
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
        &[
            &seq,
            &kind,
            &token,
            &subject,
            &state,
            &at.0,
            &Value::Object(body).to_string(),
        ],
    )
    .await?;
    Ok(seq)
}

/// Writes a `licence` feed item when `c` is a transition (see [`licence_transition`]).
pub async fn record_licence_counts(
    tx: &Transaction<'_>,
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

/// The feed after `after`, ascending, at most `limit` items.
pub async fn changes_after(
    tx: &Transaction<'_>,
    after: i64,
    limit: u32,
) -> Result<Vec<ChangeView>, StoreError> {
    changes_between(tx, after, i64::MAX, limit).await
}

/// The feed items with `after < seq <= upto`, ascending, at most `limit`.
pub async fn changes_between(
    tx: &Transaction<'_>,
    after: i64,
    upto: i64,
    limit: u32,
) -> Result<Vec<ChangeView>, StoreError> {
    let limit = limit.clamp(1, 10_000);
    let events: Vec<(i64, EventRecord)> = tx
        .query(
            &format!(
                "SELECT change_seq, {EVENT_COLS} FROM events WHERE change_seq > $1 \
                 AND change_seq <= $2 ORDER BY change_seq LIMIT $3"
            ),
            &[&after, &upto, &i64::from(limit)],
        )
        .await?
        .iter()
        .map(|r| Ok((r.get(0), event_at(r, 1)?)))
        .collect::<Result<_, StoreError>>()?;
    let items = tx
        .query(
            "SELECT seq, kind, body FROM feed_items WHERE seq > $1 AND seq <= $2 \
             ORDER BY seq LIMIT $3",
            &[&after, &upto, &i64::from(limit)],
        )
        .await?;
    let mut out = Vec::with_capacity(events.len() + items.len());
    for (seq, rec) in events {
        out.push(ChangeView {
            seq,
            item: FeedItem::Event(view_from_record(tx, rec).await?),
        });
    }
    for r in &items {
        out.push(stored_item(r.get(0), r.get(1), r.get(2))?);
    }
    Ok(merge(out, limit))
}

/// Deletes up to `batch` token and licence items older than `before`.
pub async fn prune_items(
    tx: &Transaction<'_>,
    before: Timestamp,
    batch: u32,
) -> Result<usize, StoreError> {
    Ok(tx
        .execute(
            "DELETE FROM feed_items WHERE seq IN \
             (SELECT seq FROM feed_items WHERE at < $1 LIMIT $2)",
            &[&before.0, &i64::from(batch)],
        )
        .await? as usize)
}
