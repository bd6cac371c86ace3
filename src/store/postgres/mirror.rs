//! The mirror of Apple's data per token in PostgreSQL, kept from syncs (through the stage)
//! and from notifications; the counterpart, function for function, of
//! `store::sqlite::mirror` (read that module for the why of each step). Every function runs
//! inside the caller's transaction.

use futures::TryStreamExt;
use serde_json::Value;
use tokio_postgres::Transaction;

use super::queries::{self, big};
use crate::apple::model::{Assignment, ResponseAsset, ResponseUser, UserStatus};
use crate::apple::KeySetDigest;
use crate::core::SyncKind;
use crate::store::{LicenceCounts, MirrorKind, StoreError, SyncCommit};
use crate::time::Timestamp;

pub use crate::store::mirror::Counts;

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "{}".into())
}

/// RFC 7396 merge patch (SQLite's `json_patch`): objects merge key by key, a `null` removes
/// the key, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let t = target.as_object_mut().expect("an object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn assignment_key(a: &Assignment) -> (String, String) {
    (
        a.client_user_id.clone().unwrap_or_default(),
        a.serial_number.clone().unwrap_or_default(),
    )
}

async fn insert_assignment(
    tx: &Transaction<'_>,
    token: &str,
    a: &Assignment,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let (user, serial) = assignment_key(a);
    let n = tx
        .execute(
            "INSERT INTO mirror_assignments (token, adam_id, pricing_param, client_user_id, \
             serial_number, updated_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            &[
                &token,
                &a.adam_id,
                &a.pricing_param.as_str(),
                &user,
                &serial,
                &now.0,
            ],
        )
        .await?;
    Ok(n == 1)
}

async fn upsert_user(
    tx: &Transaction<'_>,
    token: &str,
    u: &ResponseUser,
    now: Timestamp,
) -> Result<(), StoreError> {
    let invite = u.invite_code.clone().unwrap_or_default();
    tx.execute(
        "INSERT INTO mirror_users (token, client_user_id, invite_code, status, json, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (token, client_user_id, invite_code) \
         DO UPDATE SET status = excluded.status, json = excluded.json, \
         updated_at = excluded.updated_at",
        &[
            &token,
            &u.client_user_id,
            &invite,
            &u.status.as_str(),
            &json(u),
            &now.0,
        ],
    )
    .await?;
    Ok(())
}

/// Removes the assignments of `client_user_id` unless an active user reuses that id.
async fn drop_assignments_of_retired(
    tx: &Transaction<'_>,
    token: &str,
    client_user_id: &str,
    now: Timestamp,
) -> Result<(), StoreError> {
    let active: i64 = tx
        .query_one(
            "SELECT COUNT(*) FROM mirror_users WHERE token = $1 AND client_user_id = $2 \
             AND status != 'Retired'",
            &[&token, &client_user_id],
        )
        .await?
        .get(0);
    if active > 0 {
        return Ok(());
    }
    drop_assignments_of(tx, token, client_user_id, now).await
}

/// Deletes the assignments of `client_user_id` and recounts the assets they held.
async fn drop_assignments_of(
    tx: &Transaction<'_>,
    token: &str,
    client_user_id: &str,
    now: Timestamp,
) -> Result<(), StoreError> {
    let assets: Vec<(String, String)> = tx
        .query(
            "SELECT DISTINCT adam_id, pricing_param FROM mirror_assignments \
             WHERE token = $1 AND client_user_id = $2",
            &[&token, &client_user_id],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    tx.execute(
        "DELETE FROM mirror_assignments WHERE token = $1 AND client_user_id = $2",
        &[&token, &client_user_id],
    )
    .await?;
    for (adam, pricing) in assets {
        recount(tx, token, &adam, &pricing, now).await?;
    }
    Ok(())
}

/// Recomputes `assignedCount` / `availableCount` of one asset from the mirrored assignments.
async fn recount(
    tx: &Transaction<'_>,
    token: &str,
    adam_id: &str,
    pricing: &str,
    now: Timestamp,
) -> Result<(), StoreError> {
    let assigned: i64 = tx
        .query_one(
            "SELECT COUNT(*) FROM mirror_assignments WHERE token = $1 AND adam_id = $2 \
             AND pricing_param = $3",
            &[&token, &adam_id, &pricing],
        )
        .await?
        .get(0);
    let Some(row) = tx
        .query_opt(
            "SELECT total_count, available_count, json FROM mirror_assets \
             WHERE token = $1 AND adam_id = $2 AND pricing_param = $3",
            &[&token, &adam_id, &pricing],
        )
        .await?
    else {
        // Not mirrored yet: the next assets sync brings it.
        return Ok(());
    };
    let text: String = row.get(2);
    write_counts(
        tx,
        token,
        adam_id,
        pricing,
        (assigned, row.get(0), row.get(1)),
        &text,
        now,
    )
    .await
}

/// Moves `assignedCount` of one asset by `delta` (never below 0), without counting rows.
async fn adjust(
    tx: &Transaction<'_>,
    token: &str,
    adam_id: &str,
    pricing: &str,
    delta: i64,
    now: Timestamp,
) -> Result<(), StoreError> {
    if delta == 0 {
        return Ok(());
    }
    let Some(row) = tx
        .query_opt(
            "SELECT assigned_count, total_count, available_count, json FROM mirror_assets \
             WHERE token = $1 AND adam_id = $2 AND pricing_param = $3",
            &[&token, &adam_id, &pricing],
        )
        .await?
    else {
        return Ok(());
    };
    let assigned: i64 = row.get(0);
    let text: String = row.get(3);
    let counts = (
        assigned.saturating_add(delta).max(0),
        row.get(1),
        row.get(2),
    );
    write_counts(tx, token, adam_id, pricing, counts, &text, now).await
}

/// Stores new counts (assigned, total, available before) of one asset; a 0 ↔ more-than-0
/// change of the available count writes a `licence` feed item in the same transaction.
async fn write_counts(
    tx: &Transaction<'_>,
    token: &str,
    adam_id: &str,
    pricing: &str,
    (assigned, total, was): (i64, i64, i64),
    text: &str,
    now: Timestamp,
) -> Result<(), StoreError> {
    let available = (total - assigned).max(0);
    let mut v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let product = v
        .get("productType")
        .and_then(Value::as_str)
        .map(str::to_string);
    queries::record_licence_counts(
        tx,
        token,
        &LicenceCounts {
            adam_id,
            pricing_param: pricing,
            product_type: product.as_deref(),
            before: Some(was),
            available,
            assigned,
            total,
        },
        now,
    )
    .await?;
    if let Some(o) = v.as_object_mut() {
        o.insert("assignedCount".into(), assigned.into());
        o.insert("availableCount".into(), available.into());
    }
    tx.execute(
        "UPDATE mirror_assets SET assigned_count = $4, available_count = $5, json = $6, \
         updated_at = $7 WHERE token = $1 AND adam_id = $2 AND pricing_param = $3",
        &[
            &token,
            &adam_id,
            &pricing,
            &assigned,
            &available,
            &v.to_string(),
            &now.0,
        ],
    )
    .await?;
    Ok(())
}

/// Recomputes the counts of the given assets from the mirrored assignments (each once).
pub async fn recount_assets(
    tx: &Transaction<'_>,
    token: &str,
    assets: impl IntoIterator<Item = (String, String)>,
    now: Timestamp,
) -> Result<(), StoreError> {
    for (adam, pricing) in assets {
        recount(tx, token, &adam, &pricing, now).await?;
    }
    Ok(())
}

/// A SUCCESS ASSET_MANAGEMENT notification: associate inserts the listed assignments,
/// disassociate and revoke delete them; counts follow as `counts` says.
pub async fn apply_asset_notification(
    tx: &Transaction<'_>,
    token: &str,
    associate: bool,
    assignments: &[Assignment],
    now: Timestamp,
    counts: Counts,
) -> Result<(), StoreError> {
    let mut touched: Vec<((String, String), i64)> = Vec::new();
    for a in assignments {
        let changed = if associate {
            insert_assignment(tx, token, a, now).await?
        } else {
            let (user, serial) = assignment_key(a);
            tx.execute(
                "DELETE FROM mirror_assignments WHERE token = $1 AND adam_id = $2 \
                 AND pricing_param = $3 AND client_user_id = $4 AND serial_number = $5",
                &[
                    &token,
                    &a.adam_id,
                    &a.pricing_param.as_str(),
                    &user,
                    &serial,
                ],
            )
            .await?
                == 1
        };
        if !changed {
            continue;
        }
        let key = (a.adam_id.clone(), a.pricing_param.as_str().to_string());
        let delta = if associate { 1 } else { -1 };
        match touched.iter_mut().find(|(k, _)| *k == key) {
            Some((_, d)) => *d += delta,
            None => touched.push((key, delta)),
        }
    }
    for ((adam, pricing), delta) in touched {
        match counts {
            Counts::Adjust => adjust(tx, token, &adam, &pricing, delta, now).await?,
            Counts::Recount => recount(tx, token, &adam, &pricing, now).await?,
            Counts::Defer => {}
        }
    }
    Ok(())
}

/// A SUCCESS USER_MANAGEMENT or USER_ASSOCIATED notification: upsert the users; a retired
/// user's assignments leave the mirror too.
pub async fn apply_user_notification(
    tx: &Transaction<'_>,
    token: &str,
    users: &[ResponseUser],
    now: Timestamp,
) -> Result<(), StoreError> {
    for u in users {
        if u.invite_code.is_none() {
            // Without the invite code, update the user's active entry in place.
            let rows = tx
                .query(
                    "SELECT invite_code, json FROM mirror_users WHERE token = $1 \
                     AND client_user_id = $2 AND status != 'Retired'",
                    &[&token, &u.client_user_id],
                )
                .await?;
            if !rows.is_empty() {
                let patch = serde_json::to_value(u).unwrap_or(Value::Null);
                for r in &rows {
                    let invite: String = r.get(0);
                    let mut v: Value = serde_json::from_str(r.get(1)).unwrap_or(Value::Null);
                    merge_patch(&mut v, &patch);
                    tx.execute(
                        "UPDATE mirror_users SET status = $4, json = $5, updated_at = $6 \
                         WHERE token = $1 AND client_user_id = $2 AND invite_code = $3",
                        &[
                            &token,
                            &u.client_user_id,
                            &invite,
                            &u.status.as_str(),
                            &v.to_string(),
                            &now.0,
                        ],
                    )
                    .await?;
                }
                continue;
            }
        }
        upsert_user(tx, token, u, now).await?;
        if u.status == UserStatus::Retired {
            drop_assignments_of(tx, token, &u.client_user_id, now).await?;
        }
    }
    Ok(())
}

/// An ASSET_COUNT notification: licences bought, transferred or refunded.
pub async fn apply_asset_count(
    tx: &Transaction<'_>,
    token: &str,
    adam_id: &str,
    pricing: &str,
    delta: i64,
    now: Timestamp,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE mirror_assets SET total_count = total_count + $4, updated_at = $5 \
         WHERE token = $1 AND adam_id = $2 AND pricing_param = $3",
        &[&token, &adam_id, &pricing, &delta, &now.0],
    )
    .await?;
    let text: Option<String> = tx
        .query_opt(
            "SELECT json FROM mirror_assets WHERE token = $1 AND adam_id = $2 \
             AND pricing_param = $3",
            &[&token, &adam_id, &pricing],
        )
        .await?
        .map(|r| r.get(0));
    if let Some(text) = text {
        let mut v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if let Some(total) = v.get("totalCount").and_then(Value::as_i64) {
            v["totalCount"] = (total + delta).into();
            tx.execute(
                "UPDATE mirror_assets SET json = $4 WHERE token = $1 AND adam_id = $2 \
                 AND pricing_param = $3",
                &[&token, &adam_id, &pricing, &v.to_string()],
            )
            .await?;
        }
    }
    recount(tx, token, adam_id, pricing, now).await
}

// ---- the stage of a streamed sync ------------------------------------------------------

pub(crate) fn stage_table(kind: SyncKind) -> &'static str {
    match kind {
        SyncKind::Assets => "mirror_stage_assets",
        SyncKind::Assignments => "mirror_stage_assignments",
        SyncKind::Users => "mirror_stage_users",
    }
}

fn stage_key(kind: SyncKind) -> &'static str {
    match kind {
        SyncKind::Assets => "adam_id, pricing_param",
        SyncKind::Assignments => "adam_id, pricing_param, client_user_id, serial_number",
        SyncKind::Users => "client_user_id",
    }
}

/// Stages one page of an assets read; a record staged again replaces the earlier one.
pub async fn stage_assets(
    tx: &Transaction<'_>,
    sync_id: u64,
    assets: &[ResponseAsset],
) -> Result<(), StoreError> {
    let stmt = tx
        .prepare(
            "INSERT INTO mirror_stage_assets (sync_id, adam_id, pricing_param, assigned_count, \
             available_count, retired_count, total_count, json) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (sync_id, adam_id, pricing_param) DO UPDATE SET \
             assigned_count = excluded.assigned_count, available_count = excluded.available_count, \
             retired_count = excluded.retired_count, total_count = excluded.total_count, \
             json = excluded.json",
        )
        .await?;
    for a in assets {
        tx.execute(
            &stmt,
            &[
                &big(sync_id),
                &a.adam_id,
                &a.pricing_param.as_str(),
                &a.assigned_count,
                &a.available_count,
                &a.retired_count,
                &a.total_count,
                &json(a),
            ],
        )
        .await?;
    }
    Ok(())
}

/// Stages one page of an assignments read.
pub async fn stage_assignments(
    tx: &Transaction<'_>,
    sync_id: u64,
    assignments: &[Assignment],
) -> Result<(), StoreError> {
    let stmt = tx
        .prepare(
            "INSERT INTO mirror_stage_assignments (sync_id, adam_id, pricing_param, \
             client_user_id, serial_number) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .await?;
    for a in assignments {
        let (user, serial) = assignment_key(a);
        tx.execute(
            &stmt,
            &[
                &big(sync_id),
                &a.adam_id,
                &a.pricing_param.as_str(),
                &user,
                &serial,
            ],
        )
        .await?;
    }
    Ok(())
}

/// Stages one page of a users read: one entry per clientUserId, a retired entry never
/// replacing a live one.
pub async fn stage_users(
    tx: &Transaction<'_>,
    sync_id: u64,
    users: &[ResponseUser],
) -> Result<(), StoreError> {
    let stmt = tx
        .prepare(
            "INSERT INTO mirror_stage_users (sync_id, client_user_id, invite_code, status, json) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (sync_id, client_user_id) DO UPDATE SET \
             invite_code = excluded.invite_code, status = excluded.status, json = excluded.json \
             WHERE excluded.status IN ('Registered', 'Associated') \
             OR mirror_stage_users.status NOT IN ('Registered', 'Associated')",
        )
        .await?;
    for u in users {
        tx.execute(
            &stmt,
            &[
                &big(sync_id),
                &u.client_user_id,
                &u.invite_code.clone().unwrap_or_default(),
                &u.status.as_str(),
                &json(u),
            ],
        )
        .await?;
    }
    Ok(())
}

/// Rows staged by sync `sync_id`.
pub async fn stage_count(
    tx: &Transaction<'_>,
    sync_id: u64,
    kind: SyncKind,
) -> Result<u64, StoreError> {
    let n: i64 = tx
        .query_one(
            &format!(
                "SELECT COUNT(*) FROM {} WHERE sync_id = $1",
                stage_table(kind)
            ),
            &[&big(sync_id)],
        )
        .await?
        .get(0);
    Ok(n.max(0) as u64)
}

/// The digest of the keys staged by sync `sync_id`, streamed (constant memory).
pub async fn stage_digest(
    tx: &Transaction<'_>,
    sync_id: u64,
    kind: SyncKind,
) -> Result<KeySetDigest, StoreError> {
    let cols = match kind {
        SyncKind::Assets => "adam_id, pricing_param, '', ''",
        SyncKind::Assignments => "adam_id, pricing_param, client_user_id, serial_number",
        SyncKind::Users => "client_user_id, '', '', ''",
    };
    let sql = format!(
        "SELECT {cols} FROM {} WHERE sync_id = $1",
        stage_table(kind)
    );
    let rows = tx.query_raw(&sql, [big(sync_id)]).await?;
    futures::pin_mut!(rows);
    let mut d = KeySetDigest::default();
    while let Some(r) = rows.try_next().await? {
        let key: (String, String, String, String) = (r.get(0), r.get(1), r.get(2), r.get(3));
        d.add(&key);
    }
    Ok(d)
}

/// Deletes at most `limit` rows of the stage of sync `sync_id`; returns how many.
pub async fn discard_stage(
    tx: &Transaction<'_>,
    sync_id: u64,
    kind: SyncKind,
    limit: usize,
) -> Result<usize, StoreError> {
    let (table, key) = (stage_table(kind), stage_key(kind));
    Ok(tx
        .execute(
            &format!(
                "DELETE FROM {table} WHERE sync_id = $1 AND ({key}) IN \
                 (SELECT {key} FROM {table} WHERE sync_id = $1 LIMIT $2)"
            ),
            &[&big(sync_id), &(limit as i64)],
        )
        .await? as usize)
}

/// Deletes every staged row (at start, when no sync of this instance runs). With several
/// instances this must become "the stages of runs no live instance holds".
pub async fn discard_all_stages(tx: &Transaction<'_>) -> Result<usize, StoreError> {
    let mut n = 0;
    for kind in [SyncKind::Assets, SyncKind::Assignments, SyncKind::Users] {
        n += tx
            .execute(&format!("DELETE FROM {}", stage_table(kind)), &[])
            .await? as usize;
    }
    Ok(n)
}

/// Moves the stage of sync `sync_id` into `token`'s mirror with set operations.
pub async fn commit_stage(
    tx: &Transaction<'_>,
    token: &str,
    sync_id: u64,
    kind: SyncKind,
    replace: bool,
    now: Timestamp,
) -> Result<(), StoreError> {
    let id = big(sync_id);
    match kind {
        SyncKind::Assets => {
            if replace {
                tx.execute(
                    "DELETE FROM mirror_assets WHERE token = $1 AND NOT EXISTS (\
                     SELECT 1 FROM mirror_stage_assets s WHERE s.sync_id = $2 \
                     AND s.adam_id = mirror_assets.adam_id \
                     AND s.pricing_param = mirror_assets.pricing_param)",
                    &[&token, &id],
                )
                .await?;
            }
            tx.execute(
                "INSERT INTO mirror_assets (token, adam_id, pricing_param, assigned_count, \
                 available_count, retired_count, total_count, json, updated_at) \
                 SELECT $1, adam_id, pricing_param, assigned_count, available_count, \
                 retired_count, total_count, json, $3 FROM mirror_stage_assets WHERE sync_id = $2 \
                 ON CONFLICT (token, adam_id, pricing_param) DO UPDATE SET \
                 assigned_count = excluded.assigned_count, \
                 available_count = excluded.available_count, \
                 retired_count = excluded.retired_count, total_count = excluded.total_count, \
                 json = excluded.json, updated_at = excluded.updated_at",
                &[&token, &id, &now.0],
            )
            .await?;
        }
        SyncKind::Assignments => {
            if replace {
                tx.execute(
                    "DELETE FROM mirror_assignments WHERE token = $1 AND NOT EXISTS (\
                     SELECT 1 FROM mirror_stage_assignments s WHERE s.sync_id = $2 \
                     AND s.adam_id = mirror_assignments.adam_id \
                     AND s.pricing_param = mirror_assignments.pricing_param \
                     AND s.client_user_id = mirror_assignments.client_user_id \
                     AND s.serial_number = mirror_assignments.serial_number)",
                    &[&token, &id],
                )
                .await?;
            }
            tx.execute(
                "INSERT INTO mirror_assignments (token, adam_id, pricing_param, \
                 client_user_id, serial_number, updated_at) \
                 SELECT $1, adam_id, pricing_param, client_user_id, serial_number, $3 \
                 FROM mirror_stage_assignments WHERE sync_id = $2 ON CONFLICT DO NOTHING",
                &[&token, &id, &now.0],
            )
            .await?;
        }
        SyncKind::Users => {
            if replace {
                tx.execute(
                    "DELETE FROM mirror_users WHERE token = $1 AND NOT EXISTS (\
                     SELECT 1 FROM mirror_stage_users s WHERE s.sync_id = $2 \
                     AND s.client_user_id = mirror_users.client_user_id \
                     AND s.invite_code = mirror_users.invite_code)",
                    &[&token, &id],
                )
                .await?;
            }
            tx.execute(
                "INSERT INTO mirror_users (token, client_user_id, invite_code, status, json, \
                 updated_at) SELECT $1, client_user_id, invite_code, status, json, $3 \
                 FROM mirror_stage_users WHERE sync_id = $2 \
                 ON CONFLICT (token, client_user_id, invite_code) DO UPDATE SET \
                 status = excluded.status, json = excluded.json, updated_at = excluded.updated_at",
                &[&token, &id, &now.0],
            )
            .await?;
            let retired: Vec<String> = tx
                .query(
                    "SELECT client_user_id FROM mirror_stage_users WHERE sync_id = $1 \
                     AND status = 'Retired'",
                    &[&id],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            for user in retired {
                drop_assignments_of_retired(tx, token, &user, now).await?;
            }
        }
    }
    Ok(())
}

/// Mirror reads for the local API, in key order, `limit` after `offset`.
pub async fn list(
    tx: &Transaction<'_>,
    token: &str,
    what: MirrorKind,
    limit: u32,
    offset: u64,
) -> Result<Vec<Value>, StoreError> {
    let limit = i64::from(limit.clamp(1, 10_000));
    let offset = big(offset);
    let parse = |s: String| serde_json::from_str(&s).unwrap_or(Value::Null);
    Ok(match what {
        MirrorKind::Assets => tx
            .query(
                "SELECT json FROM mirror_assets WHERE token = $1 \
                 ORDER BY adam_id, pricing_param LIMIT $2 OFFSET $3",
                &[&token, &limit, &offset],
            )
            .await?
            .iter()
            .map(|r| parse(r.get(0)))
            .collect(),
        MirrorKind::Users => tx
            .query(
                "SELECT json FROM mirror_users WHERE token = $1 \
                 ORDER BY client_user_id, invite_code LIMIT $2 OFFSET $3",
                &[&token, &limit, &offset],
            )
            .await?
            .iter()
            .map(|r| parse(r.get(0)))
            .collect(),
        MirrorKind::Assignments => tx
            .query(
                "SELECT adam_id, pricing_param, client_user_id, serial_number \
                 FROM mirror_assignments WHERE token = $1 \
                 ORDER BY adam_id, pricing_param, serial_number, client_user_id \
                 LIMIT $2 OFFSET $3",
                &[&token, &limit, &offset],
            )
            .await?
            .iter()
            .map(|r| {
                let (adam, pricing, user, serial): (String, String, String, String) =
                    (r.get(0), r.get(1), r.get(2), r.get(3));
                let mut v = serde_json::json!({"adamId": adam, "pricingParam": pricing});
                if !user.is_empty() {
                    v["clientUserId"] = user.into();
                }
                if !serial.is_empty() {
                    v["serialNumber"] = serial.into();
                }
                v
            })
            .collect(),
    })
}

fn version_column(kind: SyncKind) -> Option<&'static str> {
    match kind {
        SyncKind::Assignments => Some("assignments_version"),
        SyncKind::Users => Some("users_version"),
        SyncKind::Assets => None,
    }
}

/// Remembers a stored versionId for incremental syncs.
pub async fn set_version(
    tx: &Transaction<'_>,
    token: &str,
    kind: SyncKind,
    version: Option<&str>,
) -> Result<(), StoreError> {
    if let Some(col) = version_column(kind) {
        tx.execute(
            &format!("UPDATE tokens SET {col} = $2 WHERE name = $1"),
            &[&token, &version],
        )
        .await?;
    }
    Ok(())
}

pub async fn get_version(
    tx: &Transaction<'_>,
    token: &str,
    kind: SyncKind,
) -> Result<Option<String>, StoreError> {
    let Some(col) = version_column(kind) else {
        return Ok(None);
    };
    Ok(tx
        .query_opt(
            &format!("SELECT {col} FROM tokens WHERE name = $1"),
            &[&token],
        )
        .await?
        .and_then(|r| r.get(0)))
}

/// The final step of a streamed sync, in the caller's transaction.
pub async fn commit_sync(tx: &Transaction<'_>, sync: SyncCommit) -> Result<u64, StoreError> {
    let SyncCommit {
        token,
        sync_id,
        kind,
        started,
        replace,
        version_id,
        store_version,
        mut end,
    } = sync;
    let records = stage_count(tx, sync_id, kind).await?;
    let now = Timestamp::now();
    commit_stage(tx, &token, sync_id, kind, replace, now).await?;
    if replace {
        // Pages read before a notification must not undo it.
        super::notify::replay_since(tx, &token, started, now).await?;
    }
    if store_version && kind.supports_incremental() {
        set_version(tx, &token, kind, version_id.as_deref()).await?;
    }
    end.records = records;
    queries::sync_finished(tx, sync_id, Timestamp::now(), &end).await?;
    Ok(records)
}
