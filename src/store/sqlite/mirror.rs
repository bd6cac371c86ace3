//! The mirror of Apple's data per token (assets, assignments, users), kept from syncs and
//! from notifications. Every function runs inside the caller's transaction, so a sync or a
//! notification is applied whole or not at all.
//!
//! Counts: after a notification changes assignments, an asset's `assignedCount` moves by the
//! net number of assignments it added or removed ([`Counts::Adjust`], constant time), and
//! `availableCount` follows from `totalCount`; a replay after a sync that replaced the mirror
//! recomputes them from the mirrored assignments instead, once per asset the replayed
//! notifications name ([`Counts::Defer`] then [`recount_assets`], linear in those assets'
//! assignments). The next assets sync replaces both with Apple's own numbers.
//!
//! Syncs write through a stage (see "the stage of a streamed sync" below): the functions
//! `apply_assets` / `apply_assignments` / `apply_users` write a whole read at once and remain
//! for tests and small tools.

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use super::queries;
pub use crate::store::mirror::Counts;
use crate::store::{MirrorKind, StoreError, SyncCommit};
use std::collections::HashMap;

use crate::apple::model::{Assignment, ResponseAsset, ResponseUser, UserStatus};
use crate::apple::KeySetDigest;
use crate::core::SyncKind;
use crate::time::Timestamp;

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "{}".into())
}

fn upsert_asset(
    conn: &Connection,
    token: &str,
    a: &ResponseAsset,
    now: Timestamp,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO mirror_assets (token, adam_id, pricing_param, assigned_count, available_count, \
         retired_count, total_count, json, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
         ON CONFLICT(token, adam_id, pricing_param) DO UPDATE SET assigned_count = excluded.assigned_count, \
         available_count = excluded.available_count, retired_count = excluded.retired_count, \
         total_count = excluded.total_count, json = excluded.json, updated_at = excluded.updated_at",
    )?
    .execute(params![
        token,
        a.adam_id,
        a.pricing_param.as_str(),
        a.assigned_count,
        a.available_count,
        a.retired_count,
        a.total_count,
        json(a),
        now.0
    ])?;
    Ok(())
}

/// The mirrored available count of one asset, if mirrored.
fn available_of(
    conn: &Connection,
    token: &str,
    adam_id: &str,
    pricing: &str,
) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT available_count FROM mirror_assets \
             WHERE token = ?1 AND adam_id = ?2 AND pricing_param = ?3",
        )?
        .query_row(params![token, adam_id, pricing], |r| r.get(0))
        .optional()?)
}

/// Applies an assets sync: a full, consistent one replaces the token's assets. An asset whose
/// available count goes from 0 to more, or reaches 0, gets a `licence` feed item in the same
/// transaction.
pub fn apply_assets(
    conn: &Connection,
    token: &str,
    assets: &[ResponseAsset],
    replace: bool,
    now: Timestamp,
) -> Result<(), StoreError> {
    let mut before: HashMap<(String, String), i64> = HashMap::new();
    if replace {
        let rows: Vec<(String, String, i64)> = conn
            .prepare_cached(
                "SELECT adam_id, pricing_param, available_count FROM mirror_assets WHERE token = ?1",
            )?
            .query_map([token], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        before.extend(rows.into_iter().map(|(a, p, n)| ((a, p), n)));
        conn.execute("DELETE FROM mirror_assets WHERE token = ?1", [token])?;
    }
    for a in assets {
        let pricing = a.pricing_param.as_str();
        let was = if replace {
            before
                .get(&(a.adam_id.clone(), pricing.to_string()))
                .copied()
        } else {
            available_of(conn, token, &a.adam_id, pricing)?
        };
        upsert_asset(conn, token, a, now)?;
        let product = a
            .product_type
            .as_ref()
            .and_then(|p| serde_json::to_value(p).ok())
            .and_then(|v| v.as_str().map(str::to_string));
        queries::record_licence_counts(
            conn,
            token,
            &crate::store::LicenceCounts {
                adam_id: &a.adam_id,
                pricing_param: pricing,
                product_type: product.as_deref(),
                before: was,
                available: a.available_count,
                assigned: a.assigned_count,
                total: a.total_count,
            },
            now,
        )?;
    }
    Ok(())
}

fn assignment_key(a: &Assignment) -> (String, String) {
    (
        a.client_user_id.clone().unwrap_or_default(),
        a.serial_number.clone().unwrap_or_default(),
    )
}

fn insert_assignment(
    conn: &Connection,
    token: &str,
    a: &Assignment,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let (user, serial) = assignment_key(a);
    let n = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO mirror_assignments (token, adam_id, pricing_param, client_user_id, \
             serial_number, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![token, a.adam_id, a.pricing_param.as_str(), user, serial, now.0])?;
    Ok(n == 1)
}

/// Applies an assignments sync: full and consistent replaces; otherwise upserts only
/// (an incremental response does not show removals).
pub fn apply_assignments(
    conn: &Connection,
    token: &str,
    assignments: &[Assignment],
    replace: bool,
    now: Timestamp,
) -> Result<(), StoreError> {
    if replace {
        conn.execute("DELETE FROM mirror_assignments WHERE token = ?1", [token])?;
    }
    for a in assignments {
        insert_assignment(conn, token, a, now)?;
    }
    Ok(())
}

fn upsert_user(
    conn: &Connection,
    token: &str,
    u: &ResponseUser,
    now: Timestamp,
) -> Result<(), StoreError> {
    let invite = u.invite_code.clone().unwrap_or_default();
    conn.prepare_cached(
        "INSERT INTO mirror_users (token, client_user_id, invite_code, status, json, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(token, client_user_id, invite_code) DO UPDATE \
         SET status = excluded.status, json = excluded.json, updated_at = excluded.updated_at",
    )?
    .execute(params![
        token,
        u.client_user_id,
        invite,
        u.status.as_str(),
        json(u),
        now.0
    ])?;
    Ok(())
}

/// Applies a users sync: full and consistent replaces; otherwise upserts. A retired user
/// keeps no assignments (as with the notification): when a RETIRE's notification was lost,
/// this sync is how the daemon learns it, and an incremental assignments sync never shows
/// the removals.
pub fn apply_users(
    conn: &Connection,
    token: &str,
    users: &[ResponseUser],
    replace: bool,
    now: Timestamp,
) -> Result<(), StoreError> {
    if replace {
        conn.execute("DELETE FROM mirror_users WHERE token = ?1", [token])?;
    }
    for u in users {
        upsert_user(conn, token, u, now)?;
    }
    for u in users.iter().filter(|u| u.status == UserStatus::Retired) {
        drop_assignments_of_retired(conn, token, &u.client_user_id, now)?;
    }
    Ok(())
}

/// Removes the assignments of `client_user_id` unless an active user reuses that id (a
/// clientUserId can be created again after retirement).
fn drop_assignments_of_retired(
    conn: &Connection,
    token: &str,
    client_user_id: &str,
    now: Timestamp,
) -> Result<(), StoreError> {
    let active: i64 = conn.query_row(
        "SELECT COUNT(*) FROM mirror_users WHERE token = ?1 AND client_user_id = ?2 AND status != 'Retired'",
        params![token, client_user_id],
        |r| r.get(0),
    )?;
    if active > 0 {
        return Ok(());
    }
    let assets: Vec<(String, String)> = conn
        .prepare_cached(
            "SELECT DISTINCT adam_id, pricing_param FROM mirror_assignments WHERE token = ?1 AND client_user_id = ?2",
        )?
        .query_map(params![token, client_user_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    conn.execute(
        "DELETE FROM mirror_assignments WHERE token = ?1 AND client_user_id = ?2",
        params![token, client_user_id],
    )?;
    for (adam, pricing) in assets {
        recount(conn, token, &adam, &pricing, now)?;
    }
    Ok(())
}

/// Recomputes `assignedCount` / `availableCount` of one asset from the mirrored assignments.
fn recount(
    conn: &Connection,
    token: &str,
    adam_id: &str,
    pricing: &str,
    now: Timestamp,
) -> Result<(), StoreError> {
    let assigned: i64 = conn.query_row(
        "SELECT COUNT(*) FROM mirror_assignments WHERE token = ?1 AND adam_id = ?2 AND pricing_param = ?3",
        params![token, adam_id, pricing],
        |r| r.get(0),
    )?;
    let row: Option<(i64, i64, String)> = conn
        .query_row(
            "SELECT total_count, available_count, json FROM mirror_assets \
             WHERE token = ?1 AND adam_id = ?2 AND pricing_param = ?3",
            params![token, adam_id, pricing],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((total, was, text)) = row else {
        // Not mirrored yet: the next assets sync brings it.
        return Ok(());
    };
    let counts = Counted {
        assigned,
        total,
        was,
    };
    write_counts(conn, token, adam_id, pricing, counts, &text, now)
}

/// Moves `assignedCount` of one asset by `delta` (never below 0), without counting rows: a
/// location can hold 100,000 assignments of one app, and counting them for every
/// notification capped the webhook at a few hundred notifications/s.
fn adjust(
    conn: &Connection,
    token: &str,
    adam_id: &str,
    pricing: &str,
    delta: i64,
    now: Timestamp,
) -> Result<(), StoreError> {
    if delta == 0 {
        return Ok(());
    }
    let row: Option<(i64, i64, i64, String)> = conn
        .prepare_cached(
            "SELECT assigned_count, total_count, available_count, json FROM mirror_assets \
             WHERE token = ?1 AND adam_id = ?2 AND pricing_param = ?3",
        )?
        .query_row(params![token, adam_id, pricing], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let Some((assigned, total, was, text)) = row else {
        // Not mirrored yet: the next assets sync brings it.
        return Ok(());
    };
    let counts = Counted {
        assigned: assigned.saturating_add(delta).max(0),
        total,
        was,
    };
    write_counts(conn, token, adam_id, pricing, counts, &text, now)
}

/// New counts of one asset, and the available count stored before them.
struct Counted {
    assigned: i64,
    total: i64,
    was: i64,
}

/// Stores new counts of one asset; a 0 ↔ more-than-0 change of the available count writes a
/// `licence` feed item in the same transaction.
fn write_counts(
    conn: &Connection,
    token: &str,
    adam_id: &str,
    pricing: &str,
    counts: Counted,
    text: &str,
    now: Timestamp,
) -> Result<(), StoreError> {
    let Counted {
        assigned,
        total,
        was,
    } = counts;
    let available = (total - assigned).max(0);
    let mut v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    queries::record_licence_counts(
        conn,
        token,
        &crate::store::LicenceCounts {
            adam_id,
            pricing_param: pricing,
            product_type: v.get("productType").and_then(Value::as_str),
            before: Some(was),
            available,
            assigned,
            total,
        },
        now,
    )?;
    if let Some(o) = v.as_object_mut() {
        o.insert("assignedCount".into(), assigned.into());
        o.insert("availableCount".into(), available.into());
    }
    conn.prepare_cached(
        "UPDATE mirror_assets SET assigned_count = ?4, available_count = ?5, json = ?6, updated_at = ?7 \
         WHERE token = ?1 AND adam_id = ?2 AND pricing_param = ?3",
    )?
    .execute(
        params![token, adam_id, pricing, assigned, available, v.to_string(), now.0],
    )?;
    Ok(())
}

/// Recomputes every asset's counts of a token from the mirrored assignments (after an assets
/// sync whose pages may predate notifications applied meanwhile).
pub fn recount_all(conn: &Connection, token: &str, now: Timestamp) -> Result<(), StoreError> {
    let keys: Vec<(String, String)> = conn
        .prepare_cached("SELECT adam_id, pricing_param FROM mirror_assets WHERE token = ?1")?
        .query_map([token], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (adam, pricing) in keys {
        recount(conn, token, &adam, &pricing, now)?;
    }
    Ok(())
}

/// Recomputes the counts of the given assets from the mirrored assignments (each once): the
/// end of a replay, linear in the replayed notifications' assets, not in the mirror.
pub fn recount_assets(
    conn: &Connection,
    token: &str,
    assets: impl IntoIterator<Item = (String, String)>,
    now: Timestamp,
) -> Result<(), StoreError> {
    for (adam, pricing) in assets {
        recount(conn, token, &adam, &pricing, now)?;
    }
    Ok(())
}

/// A SUCCESS ASSET_MANAGEMENT notification: associate inserts the listed assignments,
/// disassociate and revoke delete them; counts follow as `counts` says.
pub fn apply_asset_notification(
    conn: &Connection,
    token: &str,
    associate: bool,
    assignments: &[Assignment],
    now: Timestamp,
    counts: Counts,
) -> Result<(), StoreError> {
    // (adamId, pricingParam) -> net change in mirrored assignments.
    let mut touched: Vec<((String, String), i64)> = Vec::new();
    for a in assignments {
        let changed = if associate {
            insert_assignment(conn, token, a, now)?
        } else {
            let (user, serial) = assignment_key(a);
            conn.prepare_cached(
                "DELETE FROM mirror_assignments WHERE token = ?1 AND adam_id = ?2 AND pricing_param = ?3 \
                 AND client_user_id = ?4 AND serial_number = ?5",
            )?
            .execute(params![token, a.adam_id, a.pricing_param.as_str(), user, serial])?
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
            Counts::Adjust => adjust(conn, token, &adam, &pricing, delta, now)?,
            Counts::Recount => recount(conn, token, &adam, &pricing, now)?,
            Counts::Defer => {}
        }
    }
    Ok(())
}

/// A SUCCESS USER_MANAGEMENT or USER_ASSOCIATED notification: upsert the users. A retired
/// user keeps no assignments (as Apple's retire does), so theirs leave the mirror too.
pub fn apply_user_notification(
    conn: &Connection,
    token: &str,
    users: &[ResponseUser],
    now: Timestamp,
) -> Result<(), StoreError> {
    for u in users {
        if u.invite_code.is_none() {
            // Without the invite code, update the user's active entry in place.
            let n = conn.execute(
                "UPDATE mirror_users SET status = ?3, json = json_patch(json, ?4), updated_at = ?5 \
                 WHERE token = ?1 AND client_user_id = ?2 AND status != 'Retired'",
                params![token, u.client_user_id, u.status.as_str(), json(u), now.0],
            )?;
            if n > 0 {
                continue;
            }
        }
        upsert_user(conn, token, u, now)?;
        if u.status == UserStatus::Retired {
            let assets: Vec<(String, String)> = conn
                .prepare_cached(
                    "SELECT DISTINCT adam_id, pricing_param FROM mirror_assignments WHERE token = ?1 AND client_user_id = ?2",
                )?
                .query_map(params![token, u.client_user_id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            conn.execute(
                "DELETE FROM mirror_assignments WHERE token = ?1 AND client_user_id = ?2",
                params![token, u.client_user_id],
            )?;
            for (adam, pricing) in assets {
                recount(conn, token, &adam, &pricing, now)?;
            }
        }
    }
    Ok(())
}

/// An ASSET_COUNT notification: licences bought, transferred or refunded.
pub fn apply_asset_count(
    conn: &Connection,
    token: &str,
    adam_id: &str,
    pricing: &str,
    delta: i64,
    now: Timestamp,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE mirror_assets SET total_count = total_count + ?4, updated_at = ?5 \
         WHERE token = ?1 AND adam_id = ?2 AND pricing_param = ?3",
        params![token, adam_id, pricing, delta, now.0],
    )?;
    let text: Option<String> = conn
        .query_row(
            "SELECT json FROM mirror_assets WHERE token = ?1 AND adam_id = ?2 AND pricing_param = ?3",
            params![token, adam_id, pricing],
            |r| r.get(0),
        )
        .ok();
    if let Some(text) = text {
        let mut v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if let Some(total) = v.get("totalCount").and_then(Value::as_i64) {
            v["totalCount"] = (total + delta).into();
            conn.execute(
                "UPDATE mirror_assets SET json = ?4 WHERE token = ?1 AND adam_id = ?2 AND pricing_param = ?3",
                params![token, adam_id, pricing, v.to_string()],
            )?;
        }
    }
    recount(conn, token, adam_id, pricing, now)
}

// ---- the stage of a streamed sync ------------------------------------------------------
//
// A sync writes each page into a stage keyed by its sync id (one small job per page, so the
// writer interleaves other work), and moves the stage into the mirror in its final
// transaction ([`commit_stage`]) with set operations: readers see the old mirror or the new
// one, never a half-applied one. A sync that fails, or a crash, leaves the mirror untouched;
// its stage is discarded in small steps ([`discard_stage`]) or at the next start
// ([`discard_all_stages`]).

/// The stage table of a kind.
pub(crate) fn stage_table(kind: SyncKind) -> &'static str {
    match kind {
        SyncKind::Assets => "mirror_stage_assets",
        SyncKind::Assignments => "mirror_stage_assignments",
        SyncKind::Users => "mirror_stage_users",
    }
}

/// The key columns of a kind's stage (after `sync_id`).
fn stage_key(kind: SyncKind) -> &'static str {
    match kind {
        SyncKind::Assets => "adam_id, pricing_param",
        SyncKind::Assignments => "adam_id, pricing_param, client_user_id, serial_number",
        SyncKind::Users => "client_user_id",
    }
}

/// Stages one page of an assets read for sync `sync_id`; a record staged again replaces the
/// earlier one (last occurrence wins, as in a read).
pub fn stage_assets(
    conn: &Connection,
    sync_id: u64,
    assets: &[ResponseAsset],
) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO mirror_stage_assets (sync_id, adam_id, pricing_param, assigned_count, \
         available_count, retired_count, total_count, json) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
         ON CONFLICT(sync_id, adam_id, pricing_param) DO UPDATE SET \
         assigned_count = excluded.assigned_count, available_count = excluded.available_count, \
         retired_count = excluded.retired_count, total_count = excluded.total_count, json = excluded.json",
    )?;
    for a in assets {
        stmt.execute(params![
            sync_id as i64,
            a.adam_id,
            a.pricing_param.as_str(),
            a.assigned_count,
            a.available_count,
            a.retired_count,
            a.total_count,
            json(a),
        ])?;
    }
    Ok(())
}

/// Stages one page of an assignments read for sync `sync_id`.
pub fn stage_assignments(
    conn: &Connection,
    sync_id: u64,
    assignments: &[Assignment],
) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "INSERT OR IGNORE INTO mirror_stage_assignments (sync_id, adam_id, pricing_param, \
         client_user_id, serial_number) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for a in assignments {
        let (user, serial) = assignment_key(a);
        stmt.execute(params![
            sync_id as i64,
            a.adam_id,
            a.pricing_param.as_str(),
            user,
            serial
        ])?;
    }
    Ok(())
}

/// Stages one page of a users read for sync `sync_id`: one entry per clientUserId, and a
/// retired entry never replaces a live (Registered/Associated) one, as a read deduplicates.
pub fn stage_users(
    conn: &Connection,
    sync_id: u64,
    users: &[ResponseUser],
) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO mirror_stage_users (sync_id, client_user_id, invite_code, status, json) \
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(sync_id, client_user_id) DO UPDATE SET \
         invite_code = excluded.invite_code, status = excluded.status, json = excluded.json \
         WHERE excluded.status IN ('Registered', 'Associated') \
         OR mirror_stage_users.status NOT IN ('Registered', 'Associated')",
    )?;
    for u in users {
        stmt.execute(params![
            sync_id as i64,
            u.client_user_id,
            u.invite_code.clone().unwrap_or_default(),
            u.status.as_str(),
            json(u)
        ])?;
    }
    Ok(())
}

/// Rows staged by sync `sync_id` (each distinct record once).
pub fn stage_count(conn: &Connection, sync_id: u64, kind: SyncKind) -> Result<u64, StoreError> {
    let n: i64 = conn.query_row(
        &format!(
            "SELECT COUNT(*) FROM {} WHERE sync_id = ?1",
            stage_table(kind)
        ),
        [sync_id as i64],
        |r| r.get(0),
    )?;
    Ok(n as u64)
}

/// The digest of the keys staged by sync `sync_id`, streamed from the stage (constant
/// memory), to compare two passes of a read. A read, for a read-only connection.
pub fn stage_digest(
    conn: &Connection,
    sync_id: u64,
    kind: SyncKind,
) -> Result<KeySetDigest, StoreError> {
    let cols = match kind {
        SyncKind::Assets => "adam_id, pricing_param, '', ''",
        SyncKind::Assignments => "adam_id, pricing_param, client_user_id, serial_number",
        SyncKind::Users => "client_user_id, '', '', ''",
    };
    let mut stmt = conn.prepare(&format!(
        "SELECT {cols} FROM {} WHERE sync_id = ?1",
        stage_table(kind)
    ))?;
    let mut rows = stmt.query([sync_id as i64])?;
    let mut d = KeySetDigest::default();
    while let Some(r) = rows.next()? {
        let key: (String, String, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
        d.add(&key);
    }
    Ok(d)
}

/// Deletes at most `limit` rows of the stage of sync `sync_id`; returns how many it deleted
/// (0: the stage is gone). Small steps, so discarding a large stage never holds the writer.
pub fn discard_stage(
    conn: &Connection,
    sync_id: u64,
    kind: SyncKind,
    limit: usize,
) -> Result<usize, StoreError> {
    let (table, key) = (stage_table(kind), stage_key(kind));
    Ok(conn.execute(
        &format!(
            "DELETE FROM {table} WHERE sync_id = ?1 AND ({key}) IN \
             (SELECT {key} FROM {table} WHERE sync_id = ?1 LIMIT ?2)"
        ),
        params![sync_id as i64, limit as i64],
    )?)
}

/// Deletes every staged row: at start no sync runs, so any stage is a crashed sync's.
pub fn discard_all_stages(conn: &Connection) -> Result<usize, StoreError> {
    let mut n = 0;
    for kind in [SyncKind::Assets, SyncKind::Assignments, SyncKind::Users] {
        n += conn.execute(&format!("DELETE FROM {}", stage_table(kind)), [])?;
    }
    Ok(n)
}

/// Moves the stage of sync `sync_id` into `token`'s mirror, inside the caller's (final)
/// transaction. `replace` (a consistent full read): rows the stage does not hold leave the
/// mirror; otherwise (an incremental or an unreliable read) the stage is only added and
/// updated. Set operations in SQL, no per-row round trips; the stage itself is left for
/// [`discard_stage`]. A users read also drops the assignments of the users it shows retired.
pub fn commit_stage(
    conn: &Connection,
    token: &str,
    sync_id: u64,
    kind: SyncKind,
    replace: bool,
    now: Timestamp,
) -> Result<(), StoreError> {
    let id = sync_id as i64;
    match kind {
        SyncKind::Assets => {
            if replace {
                conn.execute(
                    "DELETE FROM mirror_assets WHERE token = ?1 AND NOT EXISTS (\
                     SELECT 1 FROM mirror_stage_assets s WHERE s.sync_id = ?2 \
                     AND s.adam_id = mirror_assets.adam_id AND s.pricing_param = mirror_assets.pricing_param)",
                    params![token, id],
                )?;
            }
            conn.execute(
                "INSERT INTO mirror_assets (token, adam_id, pricing_param, assigned_count, \
                 available_count, retired_count, total_count, json, updated_at) \
                 SELECT ?1, adam_id, pricing_param, assigned_count, available_count, retired_count, \
                 total_count, json, ?3 FROM mirror_stage_assets WHERE sync_id = ?2 \
                 ON CONFLICT(token, adam_id, pricing_param) DO UPDATE SET \
                 assigned_count = excluded.assigned_count, available_count = excluded.available_count, \
                 retired_count = excluded.retired_count, total_count = excluded.total_count, \
                 json = excluded.json, updated_at = excluded.updated_at",
                params![token, id, now.0],
            )?;
        }
        SyncKind::Assignments => {
            if replace {
                conn.execute(
                    "DELETE FROM mirror_assignments WHERE token = ?1 AND NOT EXISTS (\
                     SELECT 1 FROM mirror_stage_assignments s WHERE s.sync_id = ?2 \
                     AND s.adam_id = mirror_assignments.adam_id \
                     AND s.pricing_param = mirror_assignments.pricing_param \
                     AND s.client_user_id = mirror_assignments.client_user_id \
                     AND s.serial_number = mirror_assignments.serial_number)",
                    params![token, id],
                )?;
            }
            conn.execute(
                "INSERT OR IGNORE INTO mirror_assignments (token, adam_id, pricing_param, \
                 client_user_id, serial_number, updated_at) \
                 SELECT ?1, adam_id, pricing_param, client_user_id, serial_number, ?3 \
                 FROM mirror_stage_assignments WHERE sync_id = ?2",
                params![token, id, now.0],
            )?;
        }
        SyncKind::Users => {
            if replace {
                conn.execute(
                    "DELETE FROM mirror_users WHERE token = ?1 AND NOT EXISTS (\
                     SELECT 1 FROM mirror_stage_users s WHERE s.sync_id = ?2 \
                     AND s.client_user_id = mirror_users.client_user_id \
                     AND s.invite_code = mirror_users.invite_code)",
                    params![token, id],
                )?;
            }
            conn.execute(
                "INSERT INTO mirror_users (token, client_user_id, invite_code, status, json, updated_at) \
                 SELECT ?1, client_user_id, invite_code, status, json, ?3 \
                 FROM mirror_stage_users WHERE sync_id = ?2 \
                 ON CONFLICT(token, client_user_id, invite_code) DO UPDATE SET \
                 status = excluded.status, json = excluded.json, updated_at = excluded.updated_at",
                params![token, id, now.0],
            )?;
            let retired: Vec<String> = conn
                .prepare_cached(
                    "SELECT client_user_id FROM mirror_stage_users WHERE sync_id = ?1 AND status = 'Retired'",
                )?
                .query_map([id], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            for user in retired {
                drop_assignments_of_retired(conn, token, &user, now)?;
            }
        }
    }
    Ok(())
}

/// Mirror reads for the local API, in key order, `limit` after `cursor` (an offset).
pub fn list(
    conn: &Connection,
    token: &str,
    what: MirrorKind,
    limit: u32,
    offset: u64,
) -> Result<Vec<Value>, StoreError> {
    let limit = i64::from(limit.clamp(1, 10_000));
    let offset = offset as i64;
    let rows: Vec<Value> = match what {
        MirrorKind::Assets => conn
            .prepare_cached(
                "SELECT json FROM mirror_assets WHERE token = ?1 ORDER BY adam_id, pricing_param LIMIT ?2 OFFSET ?3",
            )?
            .query_map(params![token, limit, offset], |r| r.get::<_, String>(0))?
            .map(|r| r.map(|s| serde_json::from_str(&s).unwrap_or(Value::Null)))
            .collect::<Result<_, _>>()?,
        MirrorKind::Users => conn
            .prepare_cached(
                "SELECT json FROM mirror_users WHERE token = ?1 ORDER BY client_user_id, invite_code LIMIT ?2 OFFSET ?3",
            )?
            .query_map(params![token, limit, offset], |r| r.get::<_, String>(0))?
            .map(|r| r.map(|s| serde_json::from_str(&s).unwrap_or(Value::Null)))
            .collect::<Result<_, _>>()?,
        MirrorKind::Assignments => conn
            .prepare_cached(
                "SELECT adam_id, pricing_param, client_user_id, serial_number FROM mirror_assignments \
                 WHERE token = ?1 ORDER BY adam_id, pricing_param, serial_number, client_user_id LIMIT ?2 OFFSET ?3",
            )?
            .query_map(params![token, limit, offset], |r| {
                let (adam, pricing, user, serial): (String, String, String, String) =
                    (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
                let mut v = serde_json::json!({"adamId": adam, "pricingParam": pricing});
                if !user.is_empty() {
                    v["clientUserId"] = user.into();
                }
                if !serial.is_empty() {
                    v["serialNumber"] = serial.into();
                }
                Ok(v)
            })?
            .collect::<Result<_, _>>()?,
    };
    Ok(rows)
}

/// Remembers a stored versionId for incremental syncs.
pub fn set_version(
    conn: &Connection,
    token: &str,
    kind: crate::core::SyncKind,
    version: Option<&str>,
) -> Result<(), StoreError> {
    let col = match kind {
        crate::core::SyncKind::Assignments => "assignments_version",
        crate::core::SyncKind::Users => "users_version",
        crate::core::SyncKind::Assets => return Ok(()),
    };
    conn.execute(
        &format!("UPDATE tokens SET {col} = ?2 WHERE name = ?1"),
        params![token, version],
    )?;
    Ok(())
}

pub fn get_version(
    conn: &Connection,
    token: &str,
    kind: crate::core::SyncKind,
) -> Result<Option<String>, StoreError> {
    let col = match kind {
        crate::core::SyncKind::Assignments => "assignments_version",
        crate::core::SyncKind::Users => "users_version",
        crate::core::SyncKind::Assets => return Ok(None),
    };
    Ok(conn
        .query_row(
            &format!("SELECT {col} FROM tokens WHERE name = ?1"),
            [token],
            |r| r.get::<_, Option<String>>(0),
        )
        .ok()
        .flatten())
}

/// The final step of a streamed sync, in the caller's transaction (see
/// [`crate::store::Store::commit_sync`]). Returns the number of records the stage held.
pub fn commit_sync(conn: &Connection, sync: SyncCommit) -> Result<u64, StoreError> {
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
    let records = stage_count(conn, sync_id, kind)?;
    let now = Timestamp::now();
    commit_stage(conn, &token, sync_id, kind, replace, now)?;
    if replace {
        // Pages read before a notification must not undo it.
        super::notify::replay_since(conn, &token, started, now)?;
    }
    if store_version && kind.supports_incremental() {
        set_version(conn, &token, kind, version_id.as_deref())?;
    }
    end.records = records;
    queries::sync_finished(conn, sync_id, Timestamp::now(), &end)?;
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, invite: &str, status: UserStatus) -> ResponseUser {
        ResponseUser {
            client_user_id: id.into(),
            email: None,
            id_hash: None,
            invite_code: Some(invite.into()),
            managed_apple_id: None,
            status,
        }
    }

    fn assignments_of(conn: &Connection, id: &str) -> i64 {
        conn.query_row(
            "SELECT COUNT(*) FROM mirror_assignments WHERE token = 't' AND client_user_id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap()
    }

    #[test]
    fn a_users_sync_showing_a_retired_user_drops_their_assignments() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::store::migrations::migrate(&mut conn).unwrap();
        let now = Timestamp(1);
        let a: Vec<Assignment> = ["u1", "u2"]
            .iter()
            .map(|u| {
                serde_json::from_value(
                    serde_json::json!({"adamId": "1", "pricingParam": "STDQ", "clientUserId": u}),
                )
                .unwrap()
            })
            .collect();
        apply_assignments(&conn, "t", &a, true, now).unwrap();
        let users = [
            user("u1", "i1", UserStatus::Registered),
            user("u2", "i2", UserStatus::Registered),
        ];
        apply_users(&conn, "t", &users, true, now).unwrap();
        // Incremental: u1 retired; u2 retired once but created again (an active entry).
        let changed = [
            user("u1", "i1", UserStatus::Retired),
            user("u2", "i2", UserStatus::Retired),
            user("u2", "i3", UserStatus::Registered),
        ];
        apply_users(&conn, "t", &changed, false, now).unwrap();
        assert_eq!(assignments_of(&conn, "u1"), 0);
        assert_eq!(assignments_of(&conn, "u2"), 1);
    }
}
