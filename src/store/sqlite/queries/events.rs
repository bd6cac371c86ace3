//! The `events` table and the rows hanging off an event (`event_history`, `failures`,
//! `polls`): writing the core's changes, loading for recovery and scheduling, listing,
//! detail, pruning.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::feed::next_change_seq;
use super::{parse_col, ts};
use crate::core::{Change, EventRecord, Failure, Outcome, State};
use crate::store::views::{EventDetail, EventView, HistoryView, NotificationView, PollView};
use crate::store::{EventFilter, StoreError};
use crate::time::Timestamp;

pub(super) const EVENT_COLS: &str =
    "event_id, token, type, state, outcome, tracked_at, submitted_at, \
    settled_at, outcome_at, num_requested, num_completed, notified_success, notified_failure, \
    polls, last_poll_at, backoff_attempt, next_check_at, request IS NOT NULL, resubmitted, \
    superseded_by, supersedes, needs_full_sync";

pub(super) fn event_from_row(r: &Row<'_>) -> rusqlite::Result<EventRecord> {
    event_at(r, 0)
}

/// Decodes [`EVENT_COLS`] starting at column `o`.
pub(super) fn event_at(r: &Row<'_>, o: usize) -> rusqlite::Result<EventRecord> {
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

/// Every unsettled event, for recovery after a restart.
pub fn load_unsettled(conn: &Connection) -> Result<Vec<EventRecord>, StoreError> {
    let mut out = Vec::new();
    for_each_unsettled(conn, |rec| out.push(rec))?;
    Ok(out)
}

/// Hands every unsettled event to `f` as it is read, so that recovering a million events
/// never holds them all as records at once (docs/architecture.md, "Memory").
pub fn for_each_unsettled(
    conn: &Connection,
    mut f: impl FnMut(EventRecord),
) -> Result<usize, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {EVENT_COLS} FROM events WHERE state != 'settled'"
    ))?;
    let mut n = 0;
    for rec in stmt.query_map([], event_from_row)? {
        f(rec?);
        n += 1;
    }
    Ok(n)
}

/// How many events are not settled, from the counts the triggers keep.
pub fn count_unsettled(conn: &Connection) -> Result<usize, StoreError> {
    let n: i64 = conn.query_row(
        "SELECT COALESCE(SUM(n), 0) FROM event_counts WHERE state != 'settled'",
        [],
        |r| r.get(0),
    )?;
    Ok(usize::try_from(n).unwrap_or(0))
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

pub(super) fn view_from_record(
    conn: &Connection,
    rec: EventRecord,
) -> Result<EventView, StoreError> {
    let failures = failures_of(conn, &rec.event_id)?;
    Ok(EventView::from_record(rec, failures))
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
    super::feed::prune_items(conn, before, batch)?;
    super::submissions::prune_submissions(conn, before, batch)?;
    Ok(ids.len())
}
