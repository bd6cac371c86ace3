//! What notifications and Apple's answers do to an event (docs/lifecycle.md): SUCCESS and
//! FAILURE notifications, Event Status results, and the answer to a resubmission.

use super::record::{
    Change, EventRecord, FailureSource, HistoryEntry, NotificationInput, PollRecord, StatusResult,
    TrackRequest,
};
use super::{Core, EventType, Next, Outcome, State};
use crate::time::Timestamp;

impl Core {
    /// Applies an ASSET_MANAGEMENT / USER_MANAGEMENT notification. Returns `false` when the
    /// event is not tracked here (the store keeps it for when it is).
    pub fn notification(&mut self, now: Timestamp, n: NotificationInput) -> bool {
        self.end_recovery();
        let Some(mut t) = self.events.get(&n.event_id) else {
            return false;
        };
        if t.rec.token != n.token {
            // Another location's event with the same id cannot be ours; keep it unapplied.
            return false;
        }
        if t.seen.iter().any(|s| s == &n.notification_id) {
            return true;
        }
        t.seen.push(n.notification_id.clone());
        let before = t.rec.clone();
        let mut change = Change::of(&t.rec);
        change.applied_notifications.push(n.notification_id.clone());
        if n.success {
            t.rec.notified_success = t.rec.notified_success.saturating_add(n.entities);
            t.rec.num_completed = t.rec.num_completed.max(t.rec.notified_success);
        } else {
            t.rec.notified_failure = t.rec.notified_failure.saturating_add(n.entities);
            if let Some(e) = n.error.clone() {
                change.failures.push((FailureSource::Notification, e));
            }
        }
        let result = if n.success { "SUCCESS" } else { "FAILURE" };
        let cause = format!(
            "notification {} {result} for {}",
            n.notification_id,
            crate::time::count(n.entities, "entity", "entities")
        );
        let rec = &mut t.rec;
        let mut next = Next::Keep;
        if !n.success {
            if rec.outcome != Some(Outcome::Failed) {
                rec.outcome = Some(Outcome::Failed);
                rec.outcome_at = Some(now);
                next = Next::Sync;
            }
        } else if rec.outcome.is_none() || rec.outcome == Some(Outcome::TimedOut) {
            // A REVOKE's request does not tell how many entities Apple will report (docs/lifecycle.md#notifications).
            let known = if rec.event_type == EventType::Revoke {
                None
            } else {
                rec.num_requested
            };
            match known {
                Some(req) if rec.notified_success >= req => {
                    rec.outcome = Some(Outcome::Complete);
                    rec.outcome_at = Some(now);
                    // Only `pending → settled` is direct; a timed-out event already in
                    // `syncing` waits for a sync that starts after this outcome.
                    next = if rec.state == State::Syncing {
                        Next::Sync
                    } else {
                        Next::Settle
                    };
                }
                Some(_) => {}
                None => next = Next::Confirm,
            }
        }
        self.events.put(&t);
        self.after_change(now, before, change, next, cause);
        true
    }

    /// The answer to an [`Action::Poll`].
    pub fn status_result(&mut self, now: Timestamp, event_id: &str, result: StatusResult) {
        self.end_recovery();
        let Some(mut t) = self.events.get(event_id) else {
            return;
        };
        if t.in_flight {
            t.in_flight = false;
            self.events.put(&t);
            if let Some(q) = self.queues.get_mut(&t.rec.token) {
                q.in_flight = q.in_flight.saturating_sub(1);
            }
        }
        if t.rec.state != State::Pending {
            return;
        }
        let before = t.rec.clone();
        let mut change = Change::of(&t.rec);
        let rec = &mut t.rec;
        let (label, detail, next) = match result {
            StatusResult::Pending => {
                rec.backoff_attempt = rec.backoff_attempt.saturating_add(1);
                let resubmit = rec.has_request
                    && !rec.resubmitted
                    && rec.superseded_by.is_none()
                    && now >= rec.submitted_at.saturating_add(self.timings.resubmit_after);
                let next = if resubmit { Next::Resubmit } else { Next::Keep };
                ("PENDING".to_string(), None, next)
            }
            StatusResult::Complete {
                num_requested,
                num_completed,
            } => {
                // Apple may omit numRequested (read as 0): never lose the body's count.
                let requested = rec.num_requested.unwrap_or(0).max(num_requested);
                if requested > 0 {
                    rec.num_requested = Some(requested);
                }
                rec.num_completed = rec.num_completed.max(num_completed);
                rec.outcome = Some(Outcome::Complete);
                rec.outcome_at = Some(now);
                // Notifications that covered every entity already told the MDM everything;
                // without any (or without a count) the MDM must sync.
                let next = if rec.notified_success > 0 && rec.notified_success >= requested {
                    Next::Settle
                } else {
                    Next::Sync
                };
                (
                    "COMPLETE".to_string(),
                    Some(format!("{num_completed}/{num_requested} completed")),
                    next,
                )
            }
            StatusResult::Failed {
                num_requested,
                num_completed,
                failures,
            } => {
                if num_requested > 0 {
                    rec.num_requested = Some(rec.num_requested.unwrap_or(0).max(num_requested));
                }
                rec.num_completed = num_completed;
                rec.outcome = Some(Outcome::Failed);
                rec.outcome_at = Some(now);
                change
                    .failures
                    .extend(failures.into_iter().map(|f| (FailureSource::Status, f)));
                (
                    "FAILED".to_string(),
                    Some(format!("{num_completed}/{num_requested} completed")),
                    Next::Sync,
                )
            }
            StatusResult::NotFound => {
                rec.outcome = Some(Outcome::NotFound);
                rec.outcome_at = Some(now);
                (
                    "NOT_FOUND".to_string(),
                    Some("error 9708".to_string()),
                    Next::Sync,
                )
            }
            StatusResult::Retry { not_before, reason } => {
                rec.backoff_attempt = rec.backoff_attempt.saturating_add(1);
                ("RETRY".to_string(), Some(reason), Next::RetryAt(not_before))
            }
        };
        change.polls.push(PollRecord {
            at: now,
            result: label.clone(),
            detail,
        });
        // PENDING and retries are in the polls table; history keeps what changed.
        let cause = if matches!(next, Next::Keep | Next::RetryAt(_)) {
            String::new()
        } else {
            format!("Event Status answered {label}")
        };
        self.events.put(&t);
        self.after_change(now, before, change, next, cause);
    }

    /// The answer to an [`Action::Resubmit`]: the new eventId, or why it failed.
    pub fn resubmit_result(
        &mut self,
        now: Timestamp,
        old_id: &str,
        result: Result<String, String>,
    ) {
        self.end_recovery();
        if let Some(old) = self.orphaned_resubmits.remove(old_id) {
            // The old event settled meanwhile (it is final, so it is not linked), but Apple
            // holds the new event: track it.
            if let Ok(new_id) = result {
                if !self.events.contains(&new_id) && new_id != old_id {
                    self.track_resubmission(now, &old, new_id);
                }
            }
            return;
        }
        let Some(mut t) = self.events.get(old_id) else {
            return;
        };
        t.resubmitting = false;
        if t.in_flight {
            t.in_flight = false;
            if let Some(q) = self.queues.get_mut(&t.rec.token) {
                q.in_flight = q.in_flight.saturating_sub(1);
            }
        }
        self.events.put(&t);
        let before = t.rec.clone();
        let change = Change::of(&t.rec);
        match result {
            Ok(new_id) if !self.events.contains(&new_id) && new_id != old_id => {
                t.rec.superseded_by = Some(new_id.clone());
                self.events.put(&t);
                let old = t.rec;
                self.after_change(
                    now,
                    before,
                    change,
                    Next::Keep,
                    format!("resubmitted as {new_id}"),
                );
                self.track_resubmission(now, &old, new_id);
            }
            Ok(new_id) => {
                self.after_change(
                    now,
                    before,
                    change,
                    Next::Keep,
                    format!("resubmission returned eventId {new_id}, which is already tracked"),
                );
            }
            Err(why) => {
                self.after_change(
                    now,
                    before,
                    change,
                    Next::Keep,
                    format!("resubmission failed: {why}"),
                );
            }
        }
    }

    /// Tracks `new_id`, the resubmission of `old`, and persists it as a new row.
    pub(super) fn track_resubmission(&mut self, now: Timestamp, old: &EventRecord, new_id: String) {
        let old_id = old.event_id.clone();
        let new_rec = EventRecord::new_tracked(
            now,
            TrackRequest {
                event_id: new_id,
                token: old.token.clone(),
                event_type: old.event_type,
                submitted_at: Some(now),
                num_requested: old.num_requested,
                has_request: true,
                supersedes: Some(old_id.clone()),
            },
            &self.timings,
        );
        let mut change = Change::of(&new_rec);
        change.insert = true;
        change.copy_request_from = Some(old_id.clone());
        change.feed = true;
        change.history.push(HistoryEntry {
            at: now,
            from: None,
            to: State::Pending,
            outcome: None,
            cause: format!("tracked as the resubmission of {old_id}"),
        });
        self.emit_persist(change);
        self.insert(new_rec, false);
    }
}
