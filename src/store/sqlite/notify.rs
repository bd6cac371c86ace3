//! What notifications do to the mirror: applied with the notification's own commit, and
//! replayed after a sync that replaced the mirror with pages read before they arrived
//! (docs/architecture.md, "The mirror"). Runs inside the caller's transaction.

use std::collections::BTreeSet;

use rusqlite::Connection;

use super::{mirror, queries};
use crate::apple::model::{
    parse_notification, AssetManagementType, Notification, NotificationPayload, NotificationResult,
};
use crate::store::StoreError;
use crate::time::Timestamp;

/// Applies a notification's data to the mirror (inside the caller's transaction).
pub fn apply_notification(
    conn: &Connection,
    token: &str,
    n: &Notification,
    now: Timestamp,
) -> Result<(), StoreError> {
    apply_with(conn, token, n, now, mirror::Counts::Adjust)
}

fn apply_with(
    conn: &Connection,
    token: &str,
    n: &Notification,
    now: Timestamp,
    counts: mirror::Counts,
) -> Result<(), StoreError> {
    match &n.notification {
        NotificationPayload::AssetManagement(p) if p.result == NotificationResult::Success => {
            let associate = p.kind == AssetManagementType::Associate;
            if p.kind != AssetManagementType::Unknown {
                mirror::apply_asset_notification(
                    conn,
                    token,
                    associate,
                    &p.assignments,
                    now,
                    counts,
                )?;
            }
        }
        NotificationPayload::UserManagement(p) if p.result == NotificationResult::Success => {
            mirror::apply_user_notification(conn, token, &p.users, now)?;
        }
        NotificationPayload::UserAssociated(p) => {
            mirror::apply_user_notification(conn, token, &p.associated_users, now)?;
        }
        NotificationPayload::AssetCount(p) => {
            mirror::apply_asset_count(
                conn,
                token,
                &p.adam_id,
                p.pricing_param.as_str(),
                p.count_delta,
                now,
            )?;
        }
        _ => {}
    }
    Ok(())
}

/// Re-applies to the mirror the notifications of `token` received at or after `since`, so a
/// sync that replaced the mirror with pages read before them does not undo them.
///
/// Cost: linear in those notifications (read through the `(token, received_at)` index) and
/// in the assignments of the assets they name, which are recounted once each at the end (the
/// sync may have replaced their counts with numbers read before the change). Never a pass
/// over the whole mirror.
pub fn replay_since(
    conn: &Connection,
    token: &str,
    since: Timestamp,
    now: Timestamp,
) -> Result<usize, StoreError> {
    let bodies = queries::mirror_notification_bodies_since(conn, token, since)?;
    let mut touched: BTreeSet<(String, String)> = BTreeSet::new();
    let mut n = 0;
    for body in bodies {
        if let Ok(note) = parse_notification(body.as_bytes()) {
            if let NotificationPayload::AssetManagement(p) = &note.notification {
                if p.result == NotificationResult::Success && p.kind != AssetManagementType::Unknown
                {
                    touched.extend(
                        p.assignments
                            .iter()
                            .map(|a| (a.adam_id.clone(), a.pricing_param.as_str().to_string())),
                    );
                }
            }
            apply_with(conn, token, &note, now, mirror::Counts::Defer)?;
            n += 1;
        }
    }
    mirror::recount_assets(conn, token, touched, now)?;
    Ok(n)
}
