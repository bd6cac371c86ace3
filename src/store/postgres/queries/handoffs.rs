//! The `handoffs` table and the lease fence (issue 10, docs/architecture.md, "Several
//! instances"): work committed by an instance that does not hold the token's lease is left
//! here for the holder, in the same transaction; the holder takes it.

use std::collections::BTreeSet;

use tokio_postgres::Transaction;

use super::events::{event_at, EVENT_COLS};
use super::notifications::unapplied_notifications_for;
use crate::core::{EventRecord, NotificationInput, SyncKind};
use crate::store::handoffs::{Handoff, Taken};
use crate::store::StoreError;
use crate::time::Timestamp;

/// The server's clock at the statement (not the transaction's start: a batch may have begun
/// a while ago), in Unix milliseconds.
macro_rules! clock_now {
    () => {
        "(extract(epoch from clock_timestamp()) * 1000)::bigint"
    };
}

/// Which of `tokens` instance `me` holds an unexpired lease of, locking those lease rows
/// until the transaction ends: an instance taking one over waits for this commit, so what
/// this transaction writes is in the database before the next holder loads the token.
pub async fn fence(
    tx: &crate::store::postgres::Transaction<'_>,
    me: &str,
    tokens: &[String],
) -> Result<BTreeSet<String>, StoreError> {
    if tokens.is_empty() {
        return Ok(BTreeSet::new());
    }
    // Once per turn: prepared once per connection.
    const FENCE: &str = concat!(
        "SELECT token FROM leases WHERE holder = $1 AND token = ANY($2) AND expires_at > ",
        clock_now!(),
        " FOR SHARE"
    );
    let stmt = tx.prepare_cached(FENCE).await?;
    Ok(tx
        .query(&stmt, &[&me, &tokens])
        .await?
        .into_iter()
        .map(|r| r.get(0))
        .collect())
}

/// [`fence`] for one token: whether `me` holds its lease (locked until the transaction
/// ends).
pub async fn holds(
    tx: &crate::store::postgres::Transaction<'_>,
    me: &str,
    token: &str,
) -> Result<bool, StoreError> {
    Ok(!fence(tx, me, &[token.to_string()]).await?.is_empty())
}

pub async fn hand_off(
    tx: &Transaction<'_>,
    token: &str,
    items: &[Handoff],
    now: Timestamp,
) -> Result<(), StoreError> {
    for h in items {
        let (kind, event_id, notification_id, sync_kind, full, cause) = h.columns();
        tx.execute(
            "INSERT INTO handoffs (token, kind, event_id, notification_id, sync_kind, \
             full_sync, cause, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &token,
                &kind,
                &event_id,
                &notification_id,
                &sync_kind,
                &full,
                &cause,
                &now.0,
            ],
        )
        .await?;
    }
    Ok(())
}

/// Takes (deletes and returns) at most `limit` handoffs of `tokens`, oldest first, with
/// what they point at as it is now.
pub async fn take_handoffs(
    tx: &Transaction<'_>,
    tokens: &[String],
    limit: i64,
) -> Result<Vec<Taken>, StoreError> {
    let rows = tx
        .query(
            "DELETE FROM handoffs WHERE seq IN (SELECT seq FROM handoffs WHERE token = ANY($1) \
             ORDER BY seq LIMIT $2) \
             RETURNING seq, token, kind, event_id, notification_id, sync_kind, full_sync, cause",
            &[&tokens, &limit],
        )
        .await?;
    let mut rows: Vec<_> = rows.into_iter().collect();
    rows.sort_by_key(|r| r.get::<_, i64>(0));
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let token: String = r.get(1);
        let kind: String = r.get(2);
        let event_id: Option<String> = r.get(3);
        let notification_id: Option<String> = r.get(4);
        match (kind.as_str(), event_id, notification_id) {
            ("event", Some(id), _) => {
                if let Some(rec) = unsettled_event(tx, &id).await? {
                    let notes = unapplied_notifications_for(tx, &id).await?;
                    out.push(Taken::Event(Box::new(rec), notes));
                }
            }
            ("notification", _, Some(nid)) => {
                if let Some(n) = unapplied_notification(tx, &nid).await? {
                    out.push(Taken::Notification(n));
                }
            }
            ("sync", _, _) => {
                let sync_kind: Option<String> = r.get(5);
                let Some(Ok(kind)) = sync_kind.map(|k| k.parse::<SyncKind>()) else {
                    continue;
                };
                out.push(Taken::Sync {
                    token,
                    kind,
                    full: r.get(6),
                    cause: r.get::<_, Option<String>>(7).unwrap_or_default(),
                });
            }
            _ => {}
        }
    }
    Ok(out)
}

async fn unsettled_event(
    tx: &Transaction<'_>,
    event_id: &str,
) -> Result<Option<EventRecord>, StoreError> {
    tx.query_opt(
        &format!("SELECT {EVENT_COLS} FROM events WHERE event_id = $1 AND state != 'settled'"),
        &[&event_id],
    )
    .await?
    .map(|r| event_at(&r, 0))
    .transpose()
}

async fn unapplied_notification(
    tx: &Transaction<'_>,
    notification_id: &str,
) -> Result<Option<NotificationInput>, StoreError> {
    Ok(tx
        .query_opt(
            "SELECT notification_id, token, event_id, result, entities, error FROM notifications \
             WHERE notification_id = $1 AND applied_at IS NULL AND event_id IS NOT NULL",
            &[&notification_id],
        )
        .await?
        .map(|r| super::notifications::notification_input(&r)))
}

/// What a newly acquired token needs: its handoffs are dropped (the load covers them), its
/// runs left running by a previous holder are abandoned and their stages discarded, and
/// its unsettled events are handed to `each` with their unapplied notifications.
pub async fn load_token(
    tx: &Transaction<'_>,
    token: &str,
    now: Timestamp,
    mut each: impl FnMut(EventRecord, Vec<NotificationInput>) + Send,
) -> Result<usize, StoreError> {
    tx.execute("DELETE FROM handoffs WHERE token = $1", &[&token])
        .await?;
    for kind in [SyncKind::Assets, SyncKind::Assignments, SyncKind::Users] {
        tx.execute(
            &format!(
                "DELETE FROM {} WHERE sync_id IN \
                 (SELECT id FROM syncs WHERE token = $1 AND result = 'running')",
                crate::store::postgres::mirror::stage_table(kind)
            ),
            &[&token],
        )
        .await?;
    }
    tx.execute(
        "UPDATE syncs SET result = 'abandoned', finished_at = $2 \
         WHERE token = $1 AND result = 'running'",
        &[&token, &now.0],
    )
    .await?;
    let mut notes: std::collections::HashMap<String, Vec<NotificationInput>> = Default::default();
    for r in tx
        .query(
            "SELECT n.notification_id, n.token, n.event_id, n.result, n.entities, n.error \
             FROM notifications n JOIN events e ON e.event_id = n.event_id \
             WHERE e.token = $1 AND n.applied_at IS NULL AND e.state != 'settled' ORDER BY n.id",
            &[&token],
        )
        .await?
    {
        let n = super::notifications::notification_input(&r);
        notes.entry(n.event_id.clone()).or_default().push(n);
    }
    let rows = tx
        .query(
            &format!("SELECT {EVENT_COLS} FROM events WHERE token = $1 AND state != 'settled'"),
            &[&token],
        )
        .await?;
    let n = rows.len();
    for r in rows {
        let rec = event_at(&r, 0)?;
        let mine = notes.remove(&rec.event_id).unwrap_or_default();
        each(rec, mine);
    }
    Ok(n)
}

/// The first sync id of a block of a billion no other instance uses (the core numbers its
/// runs from there).
pub async fn reserve_sync_ids(tx: &Transaction<'_>) -> Result<u64, StoreError> {
    const BLOCK: i64 = 1_000_000_000;
    let mut block: i64 = tx
        .query_one("SELECT nextval('sync_id_blocks')", &[])
        .await?
        .get(0);
    let max: i64 = tx
        .query_one("SELECT COALESCE(MAX(id), 0) FROM syncs", &[])
        .await?
        .get(0);
    if block.saturating_mul(BLOCK) <= max {
        // Runs numbered before blocks existed: move past them for good.
        block = max / BLOCK + 1;
        tx.execute("SELECT setval('sync_id_blocks', $1)", &[&block])
            .await?;
    }
    Ok(u64::try_from(block.saturating_mul(BLOCK))
        .unwrap_or(1)
        .max(1))
}
