//! The `events` table and the rows hanging off an event (`event_history`, `failures`,
//! `polls`): writing the core's changes, loading for recovery and scheduling, listing,
//! detail, pruning.

use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Transaction};

use super::{parse, ts, u32_of};
use crate::core::{Change, EventRecord, Failure, Outcome, State};
use crate::store::postgres::Transaction as PoolTx;
use crate::store::views::{EventDetail, EventView, HistoryView, NotificationView, PollView};
use crate::store::{EventFilter, StoreError};
use crate::time::Timestamp;

pub(super) const EVENT_COLS: &str =
    "event_id, token, type, state, outcome, tracked_at, submitted_at, \
    settled_at, outcome_at, num_requested, num_completed, notified_success, notified_failure, \
    polls, last_poll_at, backoff_attempt, next_check_at, request IS NOT NULL, resubmitted, \
    superseded_by, supersedes, needs_full_sync";

/// Takes the next feed sequence number from its counter (never `MAX(change_seq)`). The
/// row lock it takes holds until the transaction ends, so two instances never get the same
/// number, and numbers are handed out in commit order.
pub async fn next_change_seq(tx: &Transaction<'_>) -> Result<i64, StoreError> {
    Ok(tx
        .query_one(
            "UPDATE counters SET value = value + 1 WHERE name = 'change_seq' RETURNING value",
            &[],
        )
        .await?
        .get(0))
}

/// Decodes [`EVENT_COLS`] starting at column `o`.
pub(super) fn event_at(r: &Row, o: usize) -> Result<EventRecord, StoreError> {
    Ok(EventRecord {
        event_id: r.get(o),
        token: r.get(o + 1),
        event_type: parse(r.get(o + 2), "type")?,
        state: parse(r.get(o + 3), "state")?,
        outcome: r
            .get::<_, Option<String>>(o + 4)
            .map(|s| parse(s, "outcome"))
            .transpose()?,
        tracked_at: Timestamp(r.get(o + 5)),
        submitted_at: Timestamp(r.get(o + 6)),
        settled_at: ts(r.get(o + 7)),
        outcome_at: ts(r.get(o + 8)),
        num_requested: r.get::<_, Option<i64>>(o + 9).map(u32_of),
        num_completed: u32_of(r.get(o + 10)),
        notified_success: u32_of(r.get(o + 11)),
        notified_failure: u32_of(r.get(o + 12)),
        polls: u32_of(r.get(o + 13)),
        last_poll_at: ts(r.get(o + 14)),
        backoff_attempt: u32_of(r.get(o + 15)),
        next_check_at: ts(r.get(o + 16)),
        has_request: r.get(o + 17),
        resubmitted: r.get(o + 18),
        superseded_by: r.get(o + 19),
        supersedes: r.get(o + 20),
        needs_full_sync: r.get(o + 21),
    })
}

/// Takes the next feed number in the statement that writes the event (see
/// [`next_change_seq`]: the same counter row, locked until the transaction ends).
macro_rules! take_seq {
    () => {
        "WITH seq AS (UPDATE counters SET value = value + 1 WHERE name = 'change_seq' \
         RETURNING value) "
    };
}

macro_rules! update_event {
    () => {
        "UPDATE events SET token = $2, type = $3, state = $4, outcome = $5, tracked_at = $6, \
         submitted_at = $7, settled_at = $8, outcome_at = $9, num_requested = $10, \
         num_completed = $11, notified_success = $12, notified_failure = $13, polls = $14, \
         last_poll_at = $15, backoff_attempt = $16, next_check_at = $17, resubmitted = $18, \
         superseded_by = $19, supersedes = $20, needs_full_sync = $21, \
         request = COALESCE($22, request)"
    };
}

const INSERT_EVENT: &str = concat!(
    take_seq!(),
    "INSERT INTO events (event_id, token, type, state, outcome, tracked_at, submitted_at, \
     settled_at, outcome_at, num_requested, num_completed, notified_success, notified_failure, \
     polls, last_poll_at, backoff_attempt, next_check_at, resubmitted, superseded_by, \
     supersedes, needs_full_sync, request, change_seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
     $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, \
     (SELECT value FROM seq))"
);
const UPDATE_EVENT_SEQ: &str = concat!(
    take_seq!(),
    update_event!(),
    ", change_seq = (SELECT value FROM seq) WHERE event_id = $1"
);
const UPDATE_EVENT: &str = concat!(update_event!(), " WHERE event_id = $1");

/// Writes an event, with its request body when `body` is set, in one statement; with
/// `seq`, the statement also takes the next feed number (the counter's `NOT NULL` target
/// makes a missing counter an error, as [`next_change_seq`] does).
async fn write_event(
    tx: &PoolTx<'_>,
    rec: &EventRecord,
    insert: bool,
    seq: bool,
    body: Option<&String>,
) -> Result<(), StoreError> {
    let big = |n: u32| i64::from(n);
    let (num_requested, num_completed) = (rec.num_requested.map(big), big(rec.num_completed));
    let (success, failure) = (big(rec.notified_success), big(rec.notified_failure));
    let (polls, backoff) = (big(rec.polls), big(rec.backoff_attempt));
    let p: [&(dyn tokio_postgres::types::ToSql + Sync); 22] = [
        &rec.event_id,
        &rec.token,
        &rec.event_type.as_str(),
        &rec.state.as_str(),
        &rec.outcome.map(Outcome::as_str),
        &rec.tracked_at.0,
        &rec.submitted_at.0,
        &rec.settled_at.map(|t| t.0),
        &rec.outcome_at.map(|t| t.0),
        &num_requested,
        &num_completed,
        &success,
        &failure,
        &polls,
        &rec.last_poll_at.map(|t| t.0),
        &backoff,
        &rec.next_check_at.map(|t| t.0),
        &rec.resubmitted,
        &rec.superseded_by,
        &rec.supersedes,
        &rec.needs_full_sync,
        &body,
    ];
    // An insert always takes a number.
    let sql = match (insert, seq) {
        (true, _) => INSERT_EVENT,
        (false, true) => UPDATE_EVENT_SEQ,
        (false, false) => UPDATE_EVENT,
    };
    let stmt = tx.prepare_cached(sql).await?;
    let n = tx.execute(&stmt, &p).await?;
    if n == 0 && !insert {
        return Err(StoreError::NotFound(format!("event {}", rec.event_id)));
    }
    Ok(())
}

/// Applies the core's changes of one executor turn, each in a savepoint of its own: a change
/// that fails is undone alone and reported, the others stay (and commit with the turn).
/// Returns, per change, `None` or why it failed.
pub async fn apply_changes(tx: &PoolTx<'_>, changes: &[Change]) -> Vec<Option<String>> {
    apply_each(tx, changes)
        .await
        .into_iter()
        .map(|r| r.err().map(|e| e.to_string()))
        .collect()
}

/// [`apply_changes`] with each change's error as it is (whose failure it was is for the
/// write health to tell).
pub async fn apply_each(tx: &PoolTx<'_>, changes: &[Change]) -> Vec<Result<(), StoreError>> {
    let mut out = Vec::with_capacity(changes.len());
    for c in changes {
        if let Err(e) = tx.batch_execute("SAVEPOINT change").await {
            out.push(Err(StoreError::from(e)));
            continue;
        }
        match apply_change(tx, c).await {
            Ok(()) => {
                let _ = tx.batch_execute("RELEASE SAVEPOINT change").await;
                out.push(Ok(()));
            }
            Err(e) => {
                let _ = tx
                    .batch_execute("ROLLBACK TO SAVEPOINT change; RELEASE SAVEPOINT change")
                    .await;
                out.push(Err(e));
            }
        }
    }
    out
}

/// One change: every statement prepared once per connection (the cache), the event with
/// its feed number and request body in one.
async fn apply_change(tx: &PoolTx<'_>, c: &Change) -> Result<(), StoreError> {
    let id = &c.event.event_id;
    if !c.rows_only {
        write_event(
            tx,
            &c.event,
            c.insert,
            c.feed || c.insert,
            c.request_body.as_ref(),
        )
        .await?;
        if let Some(from) = &c.copy_request_from {
            let stmt = tx
                .prepare_cached(
                    "UPDATE events SET request = (SELECT request FROM events WHERE event_id = $2) \
                     WHERE event_id = $1",
                )
                .await?;
            tx.execute(&stmt, &[id, from]).await?;
        }
    }
    if !c.history.is_empty() {
        let stmt = tx
            .prepare_cached(
                "INSERT INTO event_history (event_id, at, from_state, to_state, outcome, cause) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .await?;
        for h in &c.history {
            tx.execute(
                &stmt,
                &[
                    id,
                    &h.at.0,
                    &h.from.map(State::as_str),
                    &h.to.as_str(),
                    &h.outcome.map(Outcome::as_str),
                    &h.cause,
                ],
            )
            .await?;
        }
    }
    let at = c
        .history
        .last()
        .map(|h| h.at.0)
        .unwrap_or(c.event.tracked_at.0);
    if !c.failures.is_empty() {
        let stmt = tx
            .prepare_cached(
                "INSERT INTO failures (event_id, at, source, error_number, error_message, \
                 error_info) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .await?;
        for (source, f) in &c.failures {
            tx.execute(
                &stmt,
                &[
                    id,
                    &at,
                    &source.as_str(),
                    &f.error_number,
                    &f.error_message,
                    &f.error_info.as_ref().map(|v| v.to_string()),
                ],
            )
            .await?;
        }
    }
    if !c.applied_notifications.is_empty() {
        let stmt = tx
            .prepare_cached(
                "UPDATE notifications SET applied_at = $2 WHERE notification_id = $1 \
                 AND applied_at IS NULL",
            )
            .await?;
        for n in &c.applied_notifications {
            tx.execute(&stmt, &[n, &at]).await?;
        }
    }
    if !c.polls.is_empty() {
        let stmt = tx
            .prepare_cached(
                "INSERT INTO polls (event_id, at, result, detail) VALUES ($1, $2, $3, $4)",
            )
            .await?;
        for p in &c.polls {
            tx.execute(&stmt, &[id, &p.at.0, &p.result, &p.detail])
                .await?;
        }
    }
    Ok(())
}

/// Every unsettled event, for recovery after a restart.
pub async fn load_unsettled(tx: &Transaction<'_>) -> Result<Vec<EventRecord>, StoreError> {
    tx.query(
        &format!("SELECT {EVENT_COLS} FROM events WHERE state != 'settled'"),
        &[],
    )
    .await?
    .iter()
    .map(|r| event_at(r, 0))
    .collect()
}

/// Hands every unsettled event to `f`, read in pages of 5,000 by eventId, so recovery never
/// holds them all as records (docs/architecture.md, "Memory").
pub async fn for_each_unsettled(
    tx: &Transaction<'_>,
    mut f: impl FnMut(EventRecord) + Send,
) -> Result<usize, StoreError> {
    let sql = format!(
        "SELECT {EVENT_COLS} FROM events WHERE state != 'settled' AND event_id > $1 \
         ORDER BY event_id LIMIT 5000"
    );
    let mut after = String::new();
    let mut n = 0;
    loop {
        let rows = tx.query(&sql, &[&after]).await?;
        let Some(last) = rows.last() else {
            return Ok(n);
        };
        after = last.get::<_, String>(0);
        for r in &rows {
            f(event_at(r, 0)?);
            n += 1;
        }
    }
}

/// How many events are not settled, from the counts the triggers keep.
pub async fn count_unsettled(tx: &Transaction<'_>) -> Result<usize, StoreError> {
    let n: i64 = tx
        .query_one(
            "SELECT COALESCE(SUM(n), 0)::BIGINT FROM event_counts WHERE state != 'settled'",
            &[],
        )
        .await?
        .get(0);
    Ok(usize::try_from(n).unwrap_or(0))
}

/// The stored request body of an event, if the daemon holds it.
pub async fn request_body(
    tx: &Transaction<'_>,
    event_id: &str,
) -> Result<Option<String>, StoreError> {
    Ok(tx
        .query_opt(
            "SELECT request FROM events WHERE event_id = $1",
            &[&event_id],
        )
        .await?
        .and_then(|r| r.get(0)))
}

pub async fn get_event(
    tx: &Transaction<'_>,
    event_id: &str,
) -> Result<Option<EventRecord>, StoreError> {
    tx.query_opt(
        &format!("SELECT {EVENT_COLS} FROM events WHERE event_id = $1"),
        &[&event_id],
    )
    .await?
    .map(|r| event_at(&r, 0))
    .transpose()
}

pub(super) async fn view_from_record(
    tx: &Transaction<'_>,
    rec: EventRecord,
) -> Result<EventView, StoreError> {
    let failures = failures_of(tx, &rec.event_id).await?;
    Ok(EventView::from_record(rec, failures))
}

async fn failures_of(tx: &Transaction<'_>, event_id: &str) -> Result<Vec<Failure>, StoreError> {
    Ok(tx
        .query(
            "SELECT error_number, error_message, error_info FROM failures WHERE event_id = $1 \
             ORDER BY id",
            &[&event_id],
        )
        .await?
        .iter()
        .map(|r| Failure {
            error_number: r.get(0),
            error_message: r.get(1),
            error_info: r
                .get::<_, Option<String>>(2)
                .and_then(|s| serde_json::from_str(&s).ok()),
        })
        .collect())
}

pub async fn event_detail(
    tx: &Transaction<'_>,
    event_id: &str,
) -> Result<Option<EventDetail>, StoreError> {
    let Some(rec) = get_event(tx, event_id).await? else {
        return Ok(None);
    };
    let (submitted_at, outcome_at, has_request) =
        (rec.submitted_at, rec.outcome_at, rec.has_request);
    let event = view_from_record(tx, rec).await?;
    let history = tx
        .query(
            "SELECT at, from_state, to_state, outcome, cause FROM event_history \
             WHERE event_id = $1 ORDER BY id",
            &[&event_id],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(HistoryView {
                at: Timestamp(r.get(0)),
                from: r
                    .get::<_, Option<String>>(1)
                    .map(|s| parse(s, "from_state"))
                    .transpose()?,
                to: parse(r.get(2), "to_state")?,
                outcome: r
                    .get::<_, Option<String>>(3)
                    .map(|s| parse(s, "outcome"))
                    .transpose()?,
                cause: r.get(4),
            })
        })
        .collect::<Result<_, StoreError>>()?;
    let notifications = tx
        .query(
            "SELECT notification_id, type, result, entities, received_at, applied_at \
             FROM notifications WHERE event_id = $1 ORDER BY id",
            &[&event_id],
        )
        .await?
        .iter()
        .map(|r| NotificationView {
            notification_id: r.get(0),
            notification_type: r.get(1),
            result: r.get(2),
            entities: r.get::<_, Option<i64>>(3).map(u32_of),
            received_at: Timestamp(r.get(4)),
            applied_at: ts(r.get(5)),
        })
        .collect();
    let poll_log = tx
        .query(
            "SELECT at, result, detail FROM polls WHERE event_id = $1 ORDER BY id",
            &[&event_id],
        )
        .await?
        .iter()
        .map(|r| PollView {
            at: Timestamp(r.get(0)),
            result: r.get(1),
            detail: r.get(2),
        })
        .collect();
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

/// Events whose next check is due at or before `now`, earliest first (uses `events_due`).
pub async fn due_events(
    tx: &Transaction<'_>,
    now: Timestamp,
    limit: u32,
) -> Result<Vec<String>, StoreError> {
    Ok(tx
        .query(
            "SELECT event_id FROM events WHERE next_check_at IS NOT NULL AND next_check_at <= $1 \
             ORDER BY next_check_at LIMIT $2",
            &[&now.0, &i64::from(limit)],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Events newest first, with the cursor of the next page when there is one.
pub async fn list_events(
    tx: &Transaction<'_>,
    f: &EventFilter,
) -> Result<(Vec<EventView>, Option<String>), StoreError> {
    let mut sql = format!("SELECT {EVENT_COLS} FROM events WHERE TRUE");
    let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut arg = |sql: &mut String, clause: &str, v: Box<dyn ToSql + Sync + Send>| {
        args.push(v);
        sql.push_str(&clause.replace('?', &format!("${}", args.len())));
    };
    if let Some(s) = f.state {
        arg(&mut sql, " AND state = ?", Box::new(s.as_str()));
    }
    if let Some(o) = f.outcome {
        arg(&mut sql, " AND outcome = ?", Box::new(o.as_str()));
    }
    if let Some(t) = &f.token {
        arg(&mut sql, " AND token = ?", Box::new(t.clone()));
    }
    if let Some(t) = f.event_type {
        arg(&mut sql, " AND type = ?", Box::new(t.as_str()));
    }
    if let Some(c) = &f.cursor {
        let (at, id) = parse_cursor(c)?;
        arg(&mut sql, " AND (tracked_at < ?", Box::new(at));
        arg(&mut sql, " OR (tracked_at = ?", Box::new(at));
        arg(&mut sql, " AND event_id < ?))", Box::new(id));
    }
    let limit = f.limit.clamp(1, 10_000);
    arg(
        &mut sql,
        " ORDER BY tracked_at DESC, event_id DESC LIMIT ?",
        Box::new(i64::from(limit + 1)),
    );
    let params: Vec<&(dyn ToSql + Sync)> = args
        .iter()
        .map(|a| a.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let mut recs: Vec<EventRecord> = tx
        .query(&sql, &params)
        .await?
        .iter()
        .map(|r| event_at(r, 0))
        .collect::<Result<_, _>>()?;
    let next = if recs.len() > limit as usize {
        recs.truncate(limit as usize);
        recs.last()
            .map(|r| format!("{}:{}", r.tracked_at.0, r.event_id))
    } else {
        None
    };
    let mut views = Vec::with_capacity(recs.len());
    for r in recs {
        views.push(view_from_record(tx, r).await?);
    }
    Ok((views, next))
}

fn parse_cursor(c: &str) -> Result<(i64, String), StoreError> {
    let bad = || StoreError::NotFound(format!("cursor {c:?}"));
    let (at, id) = c.split_once(':').ok_or_else(bad)?;
    Ok((at.parse().map_err(|_| bad())?, id.to_string()))
}

/// One event as listed, or `None`.
pub async fn list_event_view(
    tx: &Transaction<'_>,
    event_id: &str,
) -> Result<Option<EventView>, StoreError> {
    match get_event(tx, event_id).await? {
        Some(rec) => Ok(Some(view_from_record(tx, rec).await?)),
        None => Ok(None),
    }
}

/// Deletes up to `batch` settled events settled before `before`, with their rows, and old
/// orphan notifications. Returns how many events went.
pub async fn prune(
    tx: &Transaction<'_>,
    before: Timestamp,
    batch: u32,
) -> Result<usize, StoreError> {
    let ids: Vec<String> = tx
        .query(
            "SELECT event_id FROM events WHERE settled_at IS NOT NULL AND settled_at < $1 LIMIT $2",
            &[&before.0, &i64::from(batch)],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for table in [
        "event_history",
        "polls",
        "failures",
        "notifications",
        "events",
    ] {
        tx.execute(
            &format!("DELETE FROM {table} WHERE event_id = ANY($1)"),
            &[&ids],
        )
        .await?;
    }
    tx.execute(
        "DELETE FROM notifications WHERE id IN (SELECT id FROM notifications WHERE received_at < $1 \
         AND (applied_at IS NULL OR event_id IS NULL) LIMIT $2)",
        &[&before.0, &i64::from(batch)],
    )
    .await?;
    super::feed::prune_items(tx, before, batch).await?;
    super::submissions::prune_submissions(tx, before, batch).await?;
    Ok(ids.len())
}
