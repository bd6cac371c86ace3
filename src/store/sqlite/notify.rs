//! The SQLite side of what notifications do to the mirror (decided in
//! [`crate::mirror::notify`]): applied with the notification's own commit, and replayed after
//! a sync that replaced the mirror with pages read before they arrived (docs/architecture.md,
//! "The mirror"). Runs inside the caller's transaction.

use std::collections::BTreeSet;

use rusqlite::Connection;

use super::{mirror, queries};
use crate::apple::model::{parse_notification, Notification};
use crate::mirror::notify::{effect, touched_assets, Effect};
use crate::store::StoreError;
use crate::time::Timestamp;

/// The webhook's write of one notification: its row and, if it is new, its effect on the
/// mirror (`Ok(false)`: a duplicate). Public so that the benchmark's one-commit-per-
/// notification baseline does exactly this work.
pub fn record_notification(
    c: &Connection,
    row: &crate::store::NewNotification,
    note: &Notification,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let new = queries::insert_notification(c, row)?;
    if new {
        apply_notification(c, &row.token, note, now)?;
    }
    Ok(new)
}

/// Applies a notification's data to the mirror (inside the caller's transaction).
pub fn apply_notification(
    conn: &Connection,
    token: &str,
    n: &Notification,
    now: Timestamp,
) -> Result<(), StoreError> {
    match effect(n) {
        Some(e) => apply(conn, token, &e, now, mirror::Counts::Adjust),
        None => Ok(()),
    }
}

fn apply(
    conn: &Connection,
    token: &str,
    effect: &Effect<'_>,
    now: Timestamp,
    counts: mirror::Counts,
) -> Result<(), StoreError> {
    match *effect {
        Effect::Assignments {
            associate,
            assignments,
        } => mirror::apply_asset_notification(conn, token, associate, assignments, now, counts),
        Effect::Users(users) => mirror::apply_user_notification(conn, token, users, now),
        Effect::AssetCount {
            adam_id,
            pricing_param,
            delta,
        } => mirror::apply_asset_count(conn, token, adam_id, pricing_param, delta, now),
    }
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
            if let Some(e) = effect(&note) {
                touched.extend(touched_assets(&e));
                apply(conn, token, &e, now, mirror::Counts::Defer)?;
            }
            n += 1;
        }
    }
    mirror::recount_assets(conn, token, touched, now)?;
    Ok(n)
}
