//! The `notifications` and `quarantine` tables: storing what the webhook received and
//! reading back what no event has consumed yet.

use tokio_postgres::{Row, Transaction};

use super::u32_of;
use crate::core::NotificationInput;
use crate::store::{NewNotification, StoreError};
use crate::time::Timestamp;

/// Stores a notification; `false` when its `notificationId` was already stored (duplicate,
/// also when another instance stored it a moment before).
pub async fn insert_notification(
    tx: &Transaction<'_>,
    n: &NewNotification,
) -> Result<bool, StoreError> {
    let inserted = tx
        .execute(
            "INSERT INTO notifications (notification_id, token, type, event_id, result, \
             entities, error, received_at, body) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (notification_id) DO NOTHING",
            &[
                &n.notification_id,
                &n.token,
                &n.notification_type,
                &n.event_id,
                &n.result,
                &n.entities.map(i64::from),
                &n.error
                    .as_ref()
                    .map(|e| serde_json::to_string(e).unwrap_or_default()),
                &n.received_at.0,
                &n.body,
            ],
        )
        .await?;
    Ok(inserted == 1)
}

/// Keeps an unparseable body from an authenticated sender, dropping the oldest beyond `cap`.
pub async fn quarantine(
    tx: &Transaction<'_>,
    token: &str,
    at: Timestamp,
    reason: &str,
    body: &[u8],
    cap: u32,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO quarantine (token, received_at, reason, body) VALUES ($1, $2, $3, $4)",
        &[&token, &at.0, &reason, &body],
    )
    .await?;
    tx.execute(
        "DELETE FROM quarantine WHERE id <= (SELECT MAX(id) FROM quarantine) - $1",
        &[&i64::from(cap)],
    )
    .await?;
    Ok(())
}

pub(super) fn notification_input(r: &Row) -> NotificationInput {
    let error: Option<String> = r.get(5);
    NotificationInput {
        notification_id: r.get(0),
        token: r.get(1),
        event_id: r.get(2),
        success: r.get::<_, Option<String>>(3).as_deref() == Some("SUCCESS"),
        entities: r.get::<_, Option<i64>>(4).map_or(0, u32_of),
        error: error.and_then(|e| serde_json::from_str(&e).ok()),
    }
}

/// Notifications for `event_id` that no event has consumed yet, in arrival order.
pub async fn unapplied_notifications_for(
    tx: &Transaction<'_>,
    event_id: &str,
) -> Result<Vec<NotificationInput>, StoreError> {
    Ok(tx
        .query(
            "SELECT notification_id, token, event_id, result, entities, error FROM notifications \
             WHERE event_id = $1 AND applied_at IS NULL ORDER BY id",
            &[&event_id],
        )
        .await?
        .iter()
        .map(notification_input)
        .collect())
}

/// [`unapplied_notifications_for`] for several events in one query: those of the first
/// event, then the next, each in arrival order.
pub async fn unapplied_notifications_for_all(
    tx: &crate::store::postgres::Transaction<'_>,
    event_ids: &[&str],
) -> Result<Vec<NotificationInput>, StoreError> {
    if event_ids.is_empty() {
        return Ok(Vec::new());
    }
    let stmt = tx
        .prepare_cached(
            "SELECT notification_id, token, event_id, result, entities, error FROM notifications \
             WHERE event_id = ANY($1) AND applied_at IS NULL \
             ORDER BY array_position($1, event_id), id",
        )
        .await?;
    Ok(tx
        .query(&stmt, &[&event_ids])
        .await?
        .iter()
        .map(notification_input)
        .collect())
}

/// Bodies of the notifications that change the mirror, received for `token` at or after
/// `since`, in arrival order (for the replay after a sync).
pub async fn mirror_notification_bodies_since(
    tx: &Transaction<'_>,
    token: &str,
    since: Timestamp,
) -> Result<Vec<String>, StoreError> {
    Ok(tx
        .query(
            "SELECT body FROM notifications WHERE token = $1 AND received_at >= $2 \
             AND type IN ('ASSET_MANAGEMENT', 'USER_MANAGEMENT', 'USER_ASSOCIATED') ORDER BY id",
            &[&token, &since.0],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Unapplied notifications whose event is tracked and unsettled, for recovery.
pub async fn unapplied_for_unsettled(
    tx: &Transaction<'_>,
) -> Result<Vec<NotificationInput>, StoreError> {
    Ok(tx
        .query(
            "SELECT n.notification_id, n.token, n.event_id, n.result, n.entities, n.error \
             FROM notifications n JOIN events e ON e.event_id = n.event_id \
             WHERE n.applied_at IS NULL AND e.state != 'settled' ORDER BY n.id",
            &[],
        )
        .await?
        .iter()
        .map(notification_input)
        .collect())
}
