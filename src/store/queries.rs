//! Queries. Plain functions over a `&Connection`, shared by the daemon (through
//! [`super::Store`]) and the read-only inspection commands.

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

use super::StoreError;
use crate::core::{
    Change, EventRecord, EventType, Failure, NotificationInput, Outcome, State, SyncKind,
};
use crate::time::Timestamp;

fn ts(v: Option<i64>) -> Option<Timestamp> {
    v.map(Timestamp)
}

fn parse_col<T: std::str::FromStr<Err = String>>(s: String, col: &str) -> rusqlite::Result<T> {
    s.parse::<T>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("column {col}: {e}").into(),
        )
    })
}

const EVENT_COLS: &str = "event_id, token, type, state, outcome, tracked_at, submitted_at, \
    settled_at, outcome_at, num_requested, num_completed, notified_success, notified_failure, \
    polls, last_poll_at, backoff_attempt, next_check_at, request IS NOT NULL, resubmitted, \
    superseded_by, supersedes, needs_full_sync";

fn event_from_row(r: &Row<'_>) -> rusqlite::Result<EventRecord> {
    event_at(r, 0)
}

/// Decodes [`EVENT_COLS`] starting at column `o`.
fn event_at(r: &Row<'_>, o: usize) -> rusqlite::Result<EventRecord> {
    Ok(EventRecord {
        event_id: r.get(o)?,
        token: r.get(o + 1)?,
        event_type: parse_col(r.get(o + 2)?, "type")?,
        state: parse_col(r.get(o + 3)?, "state")?,
        outcome: r
            .get::<_, Option<String>>(o + 4)?
            .map(|s| parse_col(s, "outcome"))
            .transpose()?,
        tracked_at: Timestamp(r.get(o + 5)?),
        submitted_at: Timestamp(r.get(o + 6)?),
        settled_at: ts(r.get(o + 7)?),
        outcome_at: ts(r.get(o + 8)?),
        num_requested: r.get(o + 9)?,
        num_completed: r.get(o + 10)?,
        notified_success: r.get(o + 11)?,
        notified_failure: r.get(o + 12)?,
        polls: r.get(o + 13)?,
        last_poll_at: ts(r.get(o + 14)?),
        backoff_attempt: r.get(o + 15)?,
        next_check_at: ts(r.get(o + 16)?),
        has_request: r.get(o + 17)?,
        resubmitted: r.get(o + 18)?,
        superseded_by: r.get(o + 19)?,
        supersedes: r.get(o + 20)?,
        needs_full_sync: r.get(o + 21)?,
    })
}

/// Takes the next feed sequence number. A counter of its own (not `MAX(change_seq)`), so a
/// number is never handed out twice, also after retention pruned the rows holding it.
fn next_change_seq(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn
        .prepare_cached(
            "UPDATE counters SET value = value + 1 WHERE name = 'change_seq' RETURNING value",
        )?
        .query_row([], |r| r.get(0))?)
}

fn write_event(
    conn: &Connection,
    rec: &EventRecord,
    insert: bool,
    seq: Option<i64>,
) -> Result<(), StoreError> {
    let p = params![
        rec.event_id,
        rec.token,
        rec.event_type.as_str(),
        rec.state.as_str(),
        rec.outcome.map(Outcome::as_str),
        rec.tracked_at.0,
        rec.submitted_at.0,
        rec.settled_at.map(|t| t.0),
        rec.outcome_at.map(|t| t.0),
        rec.num_requested,
        rec.num_completed,
        rec.notified_success,
        rec.notified_failure,
        rec.polls,
        rec.last_poll_at.map(|t| t.0),
        rec.backoff_attempt,
        rec.next_check_at.map(|t| t.0),
        rec.resubmitted,
        rec.superseded_by,
        rec.supersedes,
        rec.needs_full_sync,
        seq,
    ];
    if insert {
        conn.prepare_cached(
            "INSERT INTO events (event_id, token, type, state, outcome, tracked_at, submitted_at, \
             settled_at, outcome_at, num_requested, num_completed, notified_success, \
             notified_failure, polls, last_poll_at, backoff_attempt, next_check_at, resubmitted, \
             superseded_by, supersedes, needs_full_sync, change_seq) VALUES \
             (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, \
             ?19, ?20, ?21, ?22)",
        )?
        .execute(p)?;
    } else {
        let n = conn
            .prepare_cached(
                "UPDATE events SET token = ?2, type = ?3, state = ?4, outcome = ?5, \
                 tracked_at = ?6, submitted_at = ?7, settled_at = ?8, outcome_at = ?9, \
                 num_requested = ?10, num_completed = ?11, notified_success = ?12, \
                 notified_failure = ?13, polls = ?14, last_poll_at = ?15, backoff_attempt = ?16, \
                 next_check_at = ?17, resubmitted = ?18, superseded_by = ?19, supersedes = ?20, \
                 needs_full_sync = ?21, change_seq = COALESCE(?22, change_seq) \
                 WHERE event_id = ?1",
            )?
            .execute(p)?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("event {}", rec.event_id)));
        }
    }
    Ok(())
}

/// Applies the core's changes of one executor turn, each in a savepoint of its own: a change
/// that fails is undone alone and reported, the others stay (and commit with the turn).
/// Returns, per change, `None` or why it failed.
pub fn apply_changes(conn: &Connection, changes: &[Change]) -> Vec<Option<String>> {
    changes
        .iter()
        .map(|c| {
            if let Err(e) = conn.execute_batch("SAVEPOINT change") {
                return Some(e.to_string());
            }
            match apply_change(conn, c) {
                Ok(()) => {
                    let _ = conn.execute_batch("RELEASE change");
                    None
                }
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK TO change; RELEASE change");
                    Some(e.to_string())
                }
            }
        })
        .collect()
}

fn apply_change(conn: &Connection, c: &Change) -> Result<(), StoreError> {
    if !c.rows_only {
        let seq = if c.feed || c.insert {
            Some(next_change_seq(conn)?)
        } else {
            None
        };
        write_event(conn, &c.event, c.insert, seq)?;
        if let Some(body) = &c.request_body {
            conn.prepare_cached("UPDATE events SET request = ?2 WHERE event_id = ?1")?
                .execute(params![c.event.event_id, body])?;
        }
        if let Some(from) = &c.copy_request_from {
            conn.prepare_cached(
                "UPDATE events SET request = (SELECT request FROM events WHERE event_id = ?2) \
                 WHERE event_id = ?1",
            )?
            .execute(params![c.event.event_id, from])?;
        }
    }
    let mut hist = conn.prepare_cached(
        "INSERT INTO event_history (event_id, at, from_state, to_state, outcome, cause) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for h in &c.history {
        hist.execute(params![
            c.event.event_id,
            h.at.0,
            h.from.map(State::as_str),
            h.to.as_str(),
            h.outcome.map(Outcome::as_str),
            h.cause
        ])?;
    }
    let mut fail = conn.prepare_cached(
        "INSERT INTO failures (event_id, at, source, error_number, error_message, error_info) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    let at = c
        .history
        .last()
        .map(|h| h.at.0)
        .unwrap_or(c.event.tracked_at.0);
    for (source, f) in &c.failures {
        fail.execute(params![
            c.event.event_id,
            at,
            source.as_str(),
            f.error_number,
            f.error_message,
            f.error_info.as_ref().map(|v| v.to_string())
        ])?;
    }
    let mut applied = conn.prepare_cached(
        "UPDATE notifications SET applied_at = ?2 WHERE notification_id = ?1 AND applied_at IS NULL",
    )?;
    for id in &c.applied_notifications {
        applied.execute(params![id, at])?;
    }
    let mut polls = conn.prepare_cached(
        "INSERT INTO polls (event_id, at, result, detail) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for p in &c.polls {
        polls.execute(params![c.event.event_id, p.at.0, p.result, p.detail])?;
    }
    Ok(())
}

/// A received notification, as stored.
#[derive(Clone, Debug)]
pub struct NewNotification {
    pub notification_id: String,
    pub token: String,
    pub notification_type: String,
    pub event_id: Option<String>,
    pub result: Option<String>,
    pub entities: Option<u32>,
    pub error: Option<Failure>,
    pub received_at: Timestamp,
    pub body: String,
}

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

fn notification_input(r: &Row<'_>) -> rusqlite::Result<NotificationInput> {
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

/// Every unsettled event, for recovery after a restart.
pub fn load_unsettled(conn: &Connection) -> Result<Vec<EventRecord>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {EVENT_COLS} FROM events WHERE state != 'settled'"
    ))?;
    let rows = stmt.query_map([], event_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
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

/// Events whose next check is due at or before `now`, earliest first (uses `events_due`).
pub fn due_events(
    conn: &Connection,
    now: Timestamp,
    limit: u32,
) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT event_id FROM events WHERE next_check_at IS NOT NULL AND next_check_at <= ?1 \
         ORDER BY next_check_at LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![now.0, limit], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The stored request body of an event, if the daemon holds it.
pub fn request_body(conn: &Connection, event_id: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT request FROM events WHERE event_id = ?1",
            [event_id],
            |r| r.get::<_, Option<String>>(0),
        )
        .optional()?
        .flatten())
}

pub fn next_sync_id(conn: &Connection) -> Result<u64, StoreError> {
    let id: i64 = conn.query_row("SELECT COALESCE(MAX(id), 0) + 1 FROM syncs", [], |r| {
        r.get(0)
    })?;
    Ok(id.max(1) as u64)
}

pub fn sync_started(
    conn: &Connection,
    id: u64,
    token: &str,
    kind: SyncKind,
    full: bool,
    cause: &str,
    at: Timestamp,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT OR REPLACE INTO syncs (id, token, kind, full, cause, started_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![id as i64, token, kind.as_str(), full, cause, at.0],
    )?;
    Ok(())
}

/// The end of a sync run.
#[derive(Clone, Debug, Default)]
pub struct SyncEnd {
    pub pages: u32,
    pub records: u64,
    pub ok: bool,
    pub error: Option<String>,
    pub version_id: Option<String>,
}

pub fn sync_finished(
    conn: &Connection,
    id: u64,
    at: Timestamp,
    end: &SyncEnd,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE syncs SET finished_at = ?2, pages = ?3, records = ?4, result = ?5, error = ?6, \
         version_id = ?7 WHERE id = ?1",
        params![
            id as i64,
            at.0,
            end.pages,
            end.records as i64,
            if end.ok { "ok" } else { "failed" },
            end.error,
            end.version_id
        ],
    )?;
    Ok(())
}

/// Marks runs left `running` by a crash as abandoned.
pub fn abandon_running_syncs(conn: &Connection, at: Timestamp) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "UPDATE syncs SET result = 'abandoned', finished_at = ?1 WHERE result = 'running'",
        [at.0],
    )?)
}

/// A configured token as recorded for inspection.
#[derive(Clone, Debug, Default)]
pub struct TokenRow {
    pub name: String,
    pub org_name: Option<String>,
    pub expires_at: Option<Timestamp>,
}

/// Records the configured tokens (keeping what syncs and health checks learned).
pub fn upsert_tokens(
    conn: &Connection,
    rows: &[TokenRow],
    now: Timestamp,
) -> Result<(), StoreError> {
    for t in rows {
        conn.execute(
            "INSERT INTO tokens (name, org_name, expires_at, updated_at) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT(name) DO UPDATE SET org_name = excluded.org_name, \
             expires_at = excluded.expires_at, updated_at = excluded.updated_at",
            params![t.name, t.org_name, t.expires_at.map(|t| t.0), now.0],
        )?;
    }
    Ok(())
}

/// Token health as learned from Apple's answers.
pub fn set_token_health(
    conn: &Connection,
    name: &str,
    health: &str,
    reason: Option<&str>,
    since: Timestamp,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE tokens SET health = ?2, health_reason = ?3, \
         health_since = CASE WHEN health = ?2 THEN COALESCE(health_since, ?4) ELSE ?4 END, \
         updated_at = ?4 WHERE name = ?1",
        params![name, health, reason, since.0],
    )?;
    Ok(())
}

/// Records what Client Config told us about a token's location: its uId and name, the mdmInfo
/// id now on it (`None`: no mdmInfo), and the ownership conflict the upkeep decided
/// (`None` clears it). `mdm_conflict` is what `tokens` shows and `/healthz` reports as degraded.
pub fn set_token_location(
    conn: &Connection,
    name: &str,
    uid: Option<&str>,
    location: Option<&str>,
    mdm_id: Option<&str>,
    conflict: Option<&str>,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE tokens SET uid = COALESCE(?2, uid), location_name = COALESCE(?3, location_name), \
         mdm_info = ?4, mdm_conflict = ?5 WHERE name = ?1",
        params![name, uid, location, mdm_id, conflict],
    )?;
    Ok(())
}

// ---- views (the JSON of design §5) ----

/// An event as listed (design §5 event JSON).
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    pub event_id: String,
    pub token: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub state: State,
    pub outcome: Option<Outcome>,
    pub tracked_at: Timestamp,
    pub settled_at: Option<Timestamp>,
    pub num_requested: Option<u32>,
    pub num_completed: u32,
    pub polls: u32,
    pub next_check_at: Option<Timestamp>,
    pub failures: Vec<Failure>,
    pub superseded_by: Option<String>,
    pub supersedes: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HistoryView {
    pub at: Timestamp,
    pub from: Option<State>,
    pub to: State,
    pub outcome: Option<Outcome>,
    pub cause: String,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NotificationView {
    pub notification_id: String,
    #[serde(rename = "type")]
    pub notification_type: String,
    pub result: Option<String>,
    pub entities: Option<u32>,
    pub received_at: Timestamp,
    pub applied_at: Option<Timestamp>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PollView {
    pub at: Timestamp,
    pub result: String,
    pub detail: Option<String>,
}

/// One event with everything known about it.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EventDetail {
    #[serde(flatten)]
    pub event: EventView,
    pub submitted_at: Timestamp,
    pub outcome_at: Option<Timestamp>,
    pub has_request: bool,
    pub history: Vec<HistoryView>,
    pub notifications: Vec<NotificationView>,
    /// The Event Status calls (the `polls` field keeps the count, as in list views).
    pub poll_log: Vec<PollView>,
}

fn view_from_record(conn: &Connection, rec: EventRecord) -> Result<EventView, StoreError> {
    let failures = failures_of(conn, &rec.event_id)?;
    Ok(EventView::from_record(rec, failures))
}

impl EventView {
    pub fn from_record(rec: EventRecord, failures: Vec<Failure>) -> EventView {
        EventView {
            event_id: rec.event_id,
            token: rec.token,
            event_type: rec.event_type,
            state: rec.state,
            outcome: rec.outcome,
            tracked_at: rec.tracked_at,
            settled_at: rec.settled_at,
            num_requested: rec.num_requested,
            num_completed: rec.num_completed,
            polls: rec.polls,
            next_check_at: rec.next_check_at,
            failures,
            superseded_by: rec.superseded_by,
            supersedes: rec.supersedes,
        }
    }
}

fn failures_of(conn: &Connection, event_id: &str) -> Result<Vec<Failure>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT error_number, error_message, error_info FROM failures WHERE event_id = ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map([event_id], |r| {
        let info: Option<String> = r.get(2)?;
        Ok(Failure {
            error_number: r.get(0)?,
            error_message: r.get(1)?,
            error_info: info.and_then(|s| serde_json::from_str(&s).ok()),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Filters of `events` / `GET /v1/events`.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    pub state: Option<State>,
    pub outcome: Option<Outcome>,
    pub token: Option<String>,
    pub event_type: Option<EventType>,
    pub limit: u32,
    /// Opaque cursor from a previous page.
    pub cursor: Option<String>,
}

/// Events newest first, with the cursor of the next page when there is one.
pub fn list_events(
    conn: &Connection,
    f: &EventFilter,
) -> Result<(Vec<EventView>, Option<String>), StoreError> {
    let mut sql = format!("SELECT {EVENT_COLS} FROM events WHERE 1=1");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    if let Some(s) = f.state {
        sql.push_str(" AND state = ?");
        args.push(s.as_str().to_string().into());
    }
    if let Some(o) = f.outcome {
        sql.push_str(" AND outcome = ?");
        args.push(o.as_str().to_string().into());
    }
    if let Some(t) = &f.token {
        sql.push_str(" AND token = ?");
        args.push(t.clone().into());
    }
    if let Some(t) = f.event_type {
        sql.push_str(" AND type = ?");
        args.push(t.as_str().to_string().into());
    }
    if let Some(c) = &f.cursor {
        let (at, id) = parse_cursor(c)?;
        sql.push_str(" AND (tracked_at < ? OR (tracked_at = ? AND event_id < ?))");
        args.push(at.into());
        args.push(at.into());
        args.push(id.into());
    }
    let limit = f.limit.clamp(1, 10_000);
    sql.push_str(" ORDER BY tracked_at DESC, event_id DESC LIMIT ?");
    args.push(i64::from(limit + 1).into());
    let mut stmt = conn.prepare(&sql)?;
    let mut recs: Vec<EventRecord> = stmt
        .query_map(rusqlite::params_from_iter(args), event_from_row)?
        .collect::<Result<_, _>>()?;
    let next = if recs.len() > limit as usize {
        recs.truncate(limit as usize);
        recs.last()
            .map(|r| format!("{}:{}", r.tracked_at.0, r.event_id))
    } else {
        None
    };
    let views = recs
        .into_iter()
        .map(|r| view_from_record(conn, r))
        .collect::<Result<_, _>>()?;
    Ok((views, next))
}

fn parse_cursor(c: &str) -> Result<(i64, String), StoreError> {
    let bad = || StoreError::NotFound(format!("cursor {c:?}"));
    let (at, id) = c.split_once(':').ok_or_else(bad)?;
    Ok((at.parse().map_err(|_| bad())?, id.to_string()))
}

/// One event as listed, or `None`.
pub fn list_event_view(conn: &Connection, event_id: &str) -> Result<Option<EventView>, StoreError> {
    get_event(conn, event_id)?
        .map(|rec| view_from_record(conn, rec))
        .transpose()
}

pub fn get_event(conn: &Connection, event_id: &str) -> Result<Option<EventRecord>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {EVENT_COLS} FROM events WHERE event_id = ?1"),
            [event_id],
            event_from_row,
        )
        .optional()?)
}

pub fn event_detail(conn: &Connection, event_id: &str) -> Result<Option<EventDetail>, StoreError> {
    let Some(rec) = get_event(conn, event_id)? else {
        return Ok(None);
    };
    let submitted_at = rec.submitted_at;
    let outcome_at = rec.outcome_at;
    let has_request = rec.has_request;
    let event = view_from_record(conn, rec)?;
    let mut stmt = conn.prepare_cached(
        "SELECT at, from_state, to_state, outcome, cause FROM event_history WHERE event_id = ?1 ORDER BY id",
    )?;
    let history = stmt
        .query_map([event_id], |r| {
            Ok(HistoryView {
                at: Timestamp(r.get(0)?),
                from: r
                    .get::<_, Option<String>>(1)?
                    .map(|s| parse_col(s, "from_state"))
                    .transpose()?,
                to: parse_col(r.get(2)?, "to_state")?,
                outcome: r
                    .get::<_, Option<String>>(3)?
                    .map(|s| parse_col(s, "outcome"))
                    .transpose()?,
                cause: r.get(4)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut stmt = conn.prepare_cached(
        "SELECT notification_id, type, result, entities, received_at, applied_at FROM notifications \
         WHERE event_id = ?1 ORDER BY id",
    )?;
    let notifications = stmt
        .query_map([event_id], |r| {
            Ok(NotificationView {
                notification_id: r.get(0)?,
                notification_type: r.get(1)?,
                result: r.get(2)?,
                entities: r.get(3)?,
                received_at: Timestamp(r.get(4)?),
                applied_at: ts(r.get(5)?),
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut stmt = conn
        .prepare_cached("SELECT at, result, detail FROM polls WHERE event_id = ?1 ORDER BY id")?;
    let poll_log = stmt
        .query_map([event_id], |r| {
            Ok(PollView {
                at: Timestamp(r.get(0)?),
                result: r.get(1)?,
                detail: r.get(2)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(Some(EventDetail {
        event,
        submitted_at,
        outcome_at,
        has_request,
        history,
        notifications,
        poll_log,
    }))
}

/// The outcome feed: events whose state or outcome changed after `after`, in commit order.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ChangeView {
    pub seq: i64,
    #[serde(flatten)]
    pub event: EventView,
}

pub fn changes_after(
    conn: &Connection,
    after: i64,
    limit: u32,
) -> Result<Vec<ChangeView>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT change_seq, {EVENT_COLS} FROM events WHERE change_seq > ?1 ORDER BY change_seq LIMIT ?2"
    ))?;
    let rows: Vec<(i64, EventRecord)> = stmt
        .query_map(params![after, limit.clamp(1, 10_000)], |r| {
            Ok((r.get(0)?, event_at(r, 1)?))
        })?
        .collect::<Result<_, _>>()?;
    rows.into_iter()
        .map(|(seq, rec)| {
            Ok(ChangeView {
                seq,
                event: view_from_record(conn, rec)?,
            })
        })
        .collect()
}

/// A token that is not healthy: Apple refused it, or another MDM owns its location.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnhealthyToken {
    #[serde(skip)]
    pub name: String,
    pub health: String,
    pub reason: Option<String>,
    pub mdm_conflict: Option<String>,
}

/// Tokens that are unhealthy or in an mdmInfo conflict, for `/healthz`. Reads the small
/// tokens table only.
pub fn unhealthy_tokens(conn: &Connection) -> Result<Vec<UnhealthyToken>, StoreError> {
    let rows = conn
        .prepare_cached(
            "SELECT name, health, health_reason, mdm_conflict FROM tokens \
             WHERE health = 'unhealthy' OR mdm_conflict IS NOT NULL ORDER BY name",
        )?
        .query_map([], |r| {
            Ok(UnhealthyToken {
                name: r.get(0)?,
                health: r.get(1)?,
                reason: r.get(2)?,
                mdm_conflict: r.get(3)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Token health and counts for `tokens` / `GET /v1/tokens`.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TokenView {
    pub name: String,
    pub u_id: Option<String>,
    pub org_name: Option<String>,
    pub location: Option<String>,
    pub expires_at: Option<Timestamp>,
    pub health: String,
    pub health_reason: Option<String>,
    pub health_since: Option<Timestamp>,
    pub mdm_conflict: Option<String>,
    pub pending: u64,
    pub syncing: u64,
    pub last_syncs: Vec<SyncView>,
}

pub fn list_tokens(conn: &Connection) -> Result<Vec<TokenView>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT name, uid, org_name, location_name, expires_at, health, health_reason, \
         health_since, mdm_conflict FROM tokens ORDER BY name",
    )?;
    let mut tokens: Vec<TokenView> = stmt
        .query_map([], |r| {
            Ok(TokenView {
                name: r.get(0)?,
                u_id: r.get(1)?,
                org_name: r.get(2)?,
                location: r.get(3)?,
                expires_at: ts(r.get(4)?),
                health: r.get(5)?,
                health_reason: r.get(6)?,
                health_since: ts(r.get(7)?),
                mdm_conflict: r.get(8)?,
                pending: 0,
                syncing: 0,
                last_syncs: vec![],
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut counts = conn.prepare(
        "SELECT token, state, COUNT(*) FROM events WHERE state != 'settled' GROUP BY token, state",
    )?;
    let rows: Vec<(String, String, u64)> = counts
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    for t in &mut tokens {
        for (tok, state, n) in &rows {
            if tok == &t.name {
                match state.as_str() {
                    "pending" => t.pending = *n,
                    "syncing" => t.syncing = *n,
                    _ => {}
                }
            }
        }
        for kind in SyncKind::ALL {
            if let Some(s) = conn
                .query_row(
                    &format!(
                        "SELECT {SYNC_COLS} FROM syncs WHERE token = ?1 AND kind = ?2 ORDER BY id DESC LIMIT 1"
                    ),
                    params![t.name, kind.as_str()],
                    sync_from_row,
                )
                .optional()?
            {
                t.last_syncs.push(s);
            }
        }
    }
    Ok(tokens)
}

/// One sync run.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SyncView {
    pub id: u64,
    pub token: String,
    pub kind: String,
    pub full: bool,
    pub cause: Option<String>,
    pub started_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    pub duration_ms: Option<i64>,
    pub pages: u32,
    pub records: u64,
    pub result: String,
    pub error: Option<String>,
}

const SYNC_COLS: &str =
    "id, token, kind, full, cause, started_at, finished_at, pages, records, result, error";

fn sync_from_row(r: &Row<'_>) -> rusqlite::Result<SyncView> {
    let started: i64 = r.get(5)?;
    let finished: Option<i64> = r.get(6)?;
    Ok(SyncView {
        id: r.get::<_, i64>(0)? as u64,
        token: r.get(1)?,
        kind: r.get(2)?,
        full: r.get(3)?,
        cause: r.get(4)?,
        started_at: Timestamp(started),
        finished_at: ts(finished),
        duration_ms: finished.map(|f| f - started),
        pages: r.get(7)?,
        records: r.get::<_, i64>(8)? as u64,
        result: r.get(9)?,
        error: r.get(10)?,
    })
}

pub fn list_syncs(
    conn: &Connection,
    token: Option<&str>,
    limit: u32,
) -> Result<Vec<SyncView>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {SYNC_COLS} FROM syncs WHERE (?1 IS NULL OR token = ?1) ORDER BY id DESC LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![token, limit.clamp(1, 10_000)], sync_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Sync runs newest first, strictly older than the run `before` when given (the local API's
/// cursor).
pub fn list_syncs_page(
    conn: &Connection,
    token: Option<&str>,
    before: Option<u64>,
    limit: u32,
) -> Result<Vec<SyncView>, StoreError> {
    let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {SYNC_COLS} FROM syncs WHERE (?1 IS NULL OR token = ?1) AND id < ?2 ORDER BY id DESC LIMIT ?3"
    ))?;
    let rows = stmt.query_map(
        params![token, before, limit.clamp(1, 10_000)],
        sync_from_row,
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Deletes up to `batch` settled events settled before `before`, with their rows, and old
/// orphan notifications. Returns how many events went.
pub fn prune(conn: &Connection, before: Timestamp, batch: u32) -> Result<usize, StoreError> {
    let ids: Vec<String> = conn
        .prepare_cached(
            "SELECT event_id FROM events WHERE settled_at IS NOT NULL AND settled_at < ?1 LIMIT ?2",
        )?
        .query_map(params![before.0, batch], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for id in &ids {
        for table in ["event_history", "polls", "failures", "notifications"] {
            conn.execute(&format!("DELETE FROM {table} WHERE event_id = ?1"), [id])?;
        }
        conn.execute("DELETE FROM events WHERE event_id = ?1", [id])?;
    }
    conn.execute(
        "DELETE FROM notifications WHERE id IN (SELECT id FROM notifications WHERE received_at < ?1 \
         AND (applied_at IS NULL OR event_id IS NULL) LIMIT ?2)",
        params![before.0, batch],
    )?;
    Ok(ids.len())
}
