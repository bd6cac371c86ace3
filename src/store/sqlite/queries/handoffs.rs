//! The `handoffs` table (issue 10): the SQLite twin of `store::postgres::queries::handoffs`.
//! With SQLite one instance holds every token, so the daemon never hands work off; these
//! keep the two backends' operations the same (and are tested the same).

use rusqlite::{params, Connection, OptionalExtension};

use super::events::{event_from_row, EVENT_COLS};
use super::notifications::{notification_input, unapplied_notifications_for};
use crate::core::{EventRecord, NotificationInput, SyncKind};
use crate::store::handoffs::{Handoff, Taken};
use crate::store::StoreError;
use crate::time::Timestamp;

pub fn hand_off(
    conn: &Connection,
    token: &str,
    items: &[Handoff],
    now: Timestamp,
) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO handoffs (token, kind, event_id, notification_id, sync_kind, full_sync, \
         cause, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for h in items {
        let (kind, event_id, notification_id, sync_kind, full, cause) = h.columns();
        stmt.execute(params![
            token,
            kind,
            event_id,
            notification_id,
            sync_kind,
            full,
            cause,
            now.0
        ])?;
    }
    Ok(())
}

type Row = (
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    bool,
    Option<String>,
);

pub fn take_handoffs(
    conn: &Connection,
    tokens: &[String],
    limit: i64,
) -> Result<Vec<Taken>, StoreError> {
    let mut rows: Vec<Row> = Vec::new();
    {
        let mut stmt = conn.prepare_cached(
            "SELECT seq, token, kind, event_id, notification_id, sync_kind, full_sync, cause \
             FROM handoffs WHERE token = ?1 ORDER BY seq LIMIT ?2",
        )?;
        for t in tokens {
            let found = stmt.query_map(params![t, limit], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            })?;
            for row in found {
                rows.push(row?);
            }
        }
    }
    rows.sort_by_key(|r| r.0);
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    let mut out = Vec::with_capacity(rows.len());
    for (seq, token, kind, event_id, notification_id, sync_kind, full, cause) in rows {
        conn.execute("DELETE FROM handoffs WHERE seq = ?1", [seq])?;
        match (kind.as_str(), event_id, notification_id) {
            ("event", Some(id), _) => {
                let rec = conn
                    .query_row(
                        &format!(
                            "SELECT {EVENT_COLS} FROM events WHERE event_id = ?1 \
                             AND state != 'settled'"
                        ),
                        [&id],
                        event_from_row,
                    )
                    .optional()?;
                if let Some(rec) = rec {
                    let notes = unapplied_notifications_for(conn, &id)?;
                    out.push(Taken::Event(Box::new(rec), notes));
                }
            }
            ("notification", _, Some(nid)) => {
                let n = conn
                    .query_row(
                        "SELECT notification_id, token, event_id, result, entities, error \
                         FROM notifications WHERE notification_id = ?1 AND applied_at IS NULL \
                         AND event_id IS NOT NULL",
                        [&nid],
                        notification_input,
                    )
                    .optional()?;
                out.extend(n.map(Taken::Notification));
            }
            ("sync", _, _) => {
                if let Some(Ok(kind)) = sync_kind.map(|k| k.parse::<SyncKind>()) {
                    out.push(Taken::Sync {
                        token,
                        kind,
                        full,
                        cause: cause.unwrap_or_default(),
                    });
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// See the PostgreSQL `load_token`.
pub fn load_token(
    conn: &Connection,
    token: &str,
    now: Timestamp,
    mut each: impl FnMut(EventRecord, Vec<NotificationInput>),
) -> Result<usize, StoreError> {
    conn.execute("DELETE FROM handoffs WHERE token = ?1", [token])?;
    for kind in [SyncKind::Assets, SyncKind::Assignments, SyncKind::Users] {
        conn.execute(
            &format!(
                "DELETE FROM {} WHERE sync_id IN \
                 (SELECT id FROM syncs WHERE token = ?1 AND result = 'running')",
                crate::store::sqlite::mirror::stage_table(kind)
            ),
            [token],
        )?;
    }
    conn.execute(
        "UPDATE syncs SET result = 'abandoned', finished_at = ?2 \
         WHERE token = ?1 AND result = 'running'",
        params![token, now.0],
    )?;
    let mut notes: std::collections::HashMap<String, Vec<NotificationInput>> = Default::default();
    {
        let mut stmt = conn.prepare(
            "SELECT n.notification_id, n.token, n.event_id, n.result, n.entities, n.error \
             FROM notifications n JOIN events e ON e.event_id = n.event_id \
             WHERE e.token = ?1 AND n.applied_at IS NULL AND e.state != 'settled' ORDER BY n.id",
        )?;
        for n in stmt.query_map([token], notification_input)? {
            let n = n?;
            notes.entry(n.event_id.clone()).or_default().push(n);
        }
    }
    let mut stmt = conn.prepare(&format!(
        "SELECT {EVENT_COLS} FROM events WHERE token = ?1 AND state != 'settled'"
    ))?;
    let mut n = 0;
    for rec in stmt.query_map([token], event_from_row)? {
        let rec = rec?;
        let mine = notes.remove(&rec.event_id).unwrap_or_default();
        each(rec, mine);
        n += 1;
    }
    Ok(n)
}
