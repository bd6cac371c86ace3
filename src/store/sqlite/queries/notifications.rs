//! The `notifications` and `quarantine` tables: storing what the webhook received and
//! reading back what no event has consumed yet.

use rusqlite::{params, Connection, Row};

use crate::core::NotificationInput;
use crate::store::{NewNotification, StoreError};
use crate::time::Timestamp;

/// Stores a notification; `false` when its `notificationId` was already stored (duplicate).
pub fn insert_notification(conn: &Connection, n: &NewNotification) -> Result<bool, StoreError> {
    let inserted = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO notifications (notification_id, token, type, event_id, result, \
             entities, error, received_at, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?
        .execute(params![
            n.notification_id,
            n.token,
            n.notification_type,
            n.event_id,
            n.result,
            n.entities,
            n.error
                .as_ref()
                .map(|e| serde_json::to_string(e).unwrap_or_default()),
            n.received_at.0,
            n.body
        ])?;
    Ok(inserted == 1)
}

/// Keeps an unparseable body from an authenticated sender, dropping the oldest beyond `cap`.
pub fn quarantine(
    conn: &Connection,
    token: &str,
    at: Timestamp,
    reason: &str,
    body: &[u8],
    cap: u32,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO quarantine (token, received_at, reason, body) VALUES (?1, ?2, ?3, ?4)",
        params![token, at.0, reason, body],
    )?;
    conn.execute(
        "DELETE FROM quarantine WHERE id <= (SELECT MAX(id) FROM quarantine) - ?1",
        [cap],
    )?;
    Ok(())
}

pub(super) fn notification_input(r: &Row<'_>) -> rusqlite::Result<NotificationInput> {
    let error: Option<String> = r.get(5)?;
    Ok(NotificationInput {
        notification_id: r.get(0)?,
        token: r.get(1)?,
        event_id: r.get(2)?,
        success: r.get::<_, Option<String>>(3)?.as_deref() == Some("SUCCESS"),
        entities: r.get::<_, Option<u32>>(4)?.unwrap_or(0),
        error: error.and_then(|e| serde_json::from_str(&e).ok()),
    })
}

/// Notifications for `event_id` that no event has consumed yet, in arrival order.
pub fn unapplied_notifications_for(
    conn: &Connection,
    event_id: &str,
) -> Result<Vec<NotificationInput>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT notification_id, token, event_id, result, entities, error FROM notifications \
         WHERE event_id = ?1 AND applied_at IS NULL ORDER BY id",
    )?;
    let rows = stmt.query_map([event_id], notification_input)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Bodies of the notifications that change the mirror, received for `token` at or after
/// `since`, in arrival order (for the replay after a sync).
pub fn mirror_notification_bodies_since(
    conn: &Connection,
    token: &str,
    since: Timestamp,
) -> Result<Vec<String>, StoreError> {
    let bodies = conn
        .prepare_cached(
            "SELECT body FROM notifications WHERE token = ?1 AND received_at >= ?2 \
             AND type IN ('ASSET_MANAGEMENT', 'USER_MANAGEMENT', 'USER_ASSOCIATED') ORDER BY id",
        )?
        .query_map(params![token, since.0], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(bodies)
}

/// Unapplied notifications whose event is tracked and unsettled, for recovery.
pub fn unapplied_for_unsettled(conn: &Connection) -> Result<Vec<NotificationInput>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT n.notification_id, n.token, n.event_id, n.result, n.entities, n.error \
         FROM notifications n JOIN events e ON e.event_id = n.event_id \
         WHERE n.applied_at IS NULL AND e.state != 'settled' ORDER BY n.id",
    )?;
    let rows = stmt.query_map([], notification_input)?;
    Ok(rows.collect::<Result<_, _>>()?)
}
