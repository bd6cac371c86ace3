//! The PostgreSQL side of what notifications do to the mirror (decided in
//! [`crate::mirror::notify`]), as `store::sqlite::notify`. Runs inside the caller's
//! transaction.

use std::collections::BTreeSet;

use tokio_postgres::Transaction;

use super::{mirror, queries};
use crate::apple::model::{parse_notification, Notification};
use crate::mirror::notify::{effect, touched_assets, Effect};
use crate::store::StoreError;
use crate::time::Timestamp;

/// Applies a notification's data to the mirror (inside the caller's transaction).
pub async fn apply_notification(
    tx: &Transaction<'_>,
    token: &str,
    n: &Notification,
    now: Timestamp,
) -> Result<(), StoreError> {
    match effect(n) {
        Some(e) => apply(tx, token, &e, now, mirror::Counts::Adjust).await,
        None => Ok(()),
    }
}

async fn apply(
    tx: &Transaction<'_>,
    token: &str,
    effect: &Effect<'_>,
    now: Timestamp,
    counts: mirror::Counts,
) -> Result<(), StoreError> {
    match *effect {
        Effect::Assignments {
            associate,
            assignments,
        } => mirror::apply_asset_notification(tx, token, associate, assignments, now, counts).await,
        Effect::Users(users) => mirror::apply_user_notification(tx, token, users, now).await,
        Effect::AssetCount {
            adam_id,
            pricing_param,
            delta,
        } => mirror::apply_asset_count(tx, token, adam_id, pricing_param, delta, now).await,
    }
}

/// Re-applies to the mirror the notifications of `token` received at or after `since`, then
/// recounts the assets they name once each.
pub async fn replay_since(
    tx: &Transaction<'_>,
    token: &str,
    since: Timestamp,
    now: Timestamp,
) -> Result<usize, StoreError> {
    let bodies = queries::mirror_notification_bodies_since(tx, token, since).await?;
    let mut touched: BTreeSet<(String, String)> = BTreeSet::new();
    let mut n = 0;
    for body in bodies {
        if let Ok(note) = parse_notification(body.as_bytes()) {
            if let Some(e) = effect(&note) {
                touched.extend(touched_assets(&e));
                apply(tx, token, &e, now, mirror::Counts::Defer).await?;
            }
            n += 1;
        }
    }
    mirror::recount_assets(tx, token, touched, now).await?;
    Ok(n)
}
