//! The changes feed: the `change_seq` counter, the token and licence items that share it with
//! events (`feed_items`, migration 7), and reading the feed in `seq` order.
//!
//! Every kind takes its `seq` from the one counter inside the transaction of the change that
//! caused it, so the feed is one total order in commit order, and a `seq` is never handed out
//! twice (retention prunes rows, never the counter).

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{Map, Value};

use super::events::{event_at, view_from_record, EVENT_COLS};
use crate::core::EventRecord;
use crate::store::feed::{licence_item_body, merge, stored_item};
use crate::store::views::{ChangeView, FeedItem};
use crate::store::{licence_transition, LicenceCounts, StoreError};
use crate::time::Timestamp;

/// Takes the next feed sequence number. A counter of its own (not `MAX(change_seq)`), so a
/// number is never handed out twice, also after retention pruned the rows holding it.
pub(crate) fn next_change_seq(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn
        .prepare_cached(
            "UPDATE counters SET value = value + 1 WHERE name = 'change_seq' RETURNING value",
        )?
        .query_row([], |r| r.get(0))?)
}

/// The kinds of `feed_items` rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemKind {
    Token,
    Licence,
}

impl ItemKind {
    fn as_str(self) -> &'static str {
        match self {
            ItemKind::Token => "token",
            ItemKind::Licence => "licence",
        }
    }
}

fn insert_item(
    conn: &Connection,
    kind: ItemKind,
    token: &str,
    subject: &str,
    state: &str,
    at: Timestamp,
    body: &Map<String, Value>,
) -> Result<i64, StoreError> {
    let seq = next_change_seq(conn)?;
    conn.prepare_cached(
        "INSERT INTO feed_items (seq, kind, token, subject, state, at, body) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        seq,
        kind.as_str(),
        token,
        subject,
        state,
        at.0,
        Value::Object(body.clone()).to_string()
    ])?;
    Ok(seq)
}

/// Writes a `licence` feed item when `c` is a transition (see [`licence_transition`]).
pub fn record_licence_counts(
    conn: &Connection,
    token: &str,
    c: &LicenceCounts<'_>,
    at: Timestamp,
) -> Result<Option<i64>, StoreError> {
    let Some(change) = licence_transition(c.before, c.available) else {
        return Ok(None);
    };
    let subject = format!("{}/{}", c.adam_id, c.pricing_param);
    let body = licence_item_body(token, c, change, at);
    insert_item(conn, ItemKind::Licence, token, &subject, change, at, &body).map(Some)
}

/// The feed after `after`, ascending, at most `limit` items.
pub fn changes_after(
    conn: &Connection,
    after: i64,
    limit: u32,
) -> Result<Vec<ChangeView>, StoreError> {
    changes_between(conn, after, i64::MAX, limit)
}

/// The feed items with `after < seq <= upto`, ascending, at most `limit`.
pub fn changes_between(
    conn: &Connection,
    after: i64,
    upto: i64,
    limit: u32,
) -> Result<Vec<ChangeView>, StoreError> {
    let limit = limit.clamp(1, 10_000);
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT change_seq, {EVENT_COLS} FROM events WHERE change_seq > ?1 AND change_seq <= ?2 \
         ORDER BY change_seq LIMIT ?3"
    ))?;
    let events: Vec<(i64, EventRecord)> = stmt
        .query_map(params![after, upto, limit], |r| {
            Ok((r.get(0)?, event_at(r, 1)?))
        })?
        .collect::<Result<_, _>>()?;
    let items: Vec<(i64, String, String)> = conn
        .prepare_cached(
            "SELECT seq, kind, body FROM feed_items WHERE seq > ?1 AND seq <= ?2 \
             ORDER BY seq LIMIT ?3",
        )?
        .query_map(params![after, upto, limit], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut out: Vec<ChangeView> = Vec::with_capacity(events.len() + items.len());
    for (seq, rec) in events {
        out.push(ChangeView {
            seq,
            item: FeedItem::Event(view_from_record(conn, rec)?),
        });
    }
    for (seq, kind, body) in items {
        out.push(stored_item(seq, &kind, &body)?);
    }
    Ok(merge(out, limit))
}

/// How many changes the feed holds after `after`, and the highest seq handed out so far.
pub fn backlog(conn: &Connection, after: i64) -> Result<(u64, i64), StoreError> {
    let events: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM events WHERE change_seq > ?1")?
        .query_row([after], |r| r.get(0))?;
    let items: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM feed_items WHERE seq > ?1")?
        .query_row([after], |r| r.get(0))?;
    let top: i64 = conn
        .prepare_cached("SELECT value FROM counters WHERE name = 'change_seq'")?
        .query_row([], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    Ok(((events + items).max(0) as u64, top))
}

/// Deletes up to `batch` token and licence items older than `before`.
pub fn prune_items(conn: &Connection, before: Timestamp, batch: u32) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "DELETE FROM feed_items WHERE seq IN (SELECT seq FROM feed_items WHERE at < ?1 LIMIT ?2)",
        params![before.0, batch],
    )?)
}
