//! The pure core: the event lifecycle of design §2, poll scheduling and sync coalescing.
//! No IO, no clock reads, no async runtime: `now` is always an argument.
//!
//! Driving rule (as in str0m/quinn): after every input (`track`, `notification`,
//! `status_result`, `resubmit_result`, `request_sync`, `sync_finished`, `timeout`), drain
//! [`Core::poll_action`] until it returns `None`, then sleep until [`Core::poll_timeout`].
//! Every outbound action that needs an answer ([`Action::Poll`], [`Action::Resubmit`],
//! [`Action::StartSync`]) has a matching input, so the core always knows what is in flight.
//! A spurious or early `timeout` is a no-op.
//!
//! Invariants kept here (and property-tested):
//! - `settled` is final; settled events leave memory after their last [`Change`].
//! - Two polls of one event are never closer than `poll_min`.
//! - An event in `syncing` settles only when a sync of its kind for its token that *started*
//!   after its outcome was recorded completes (and is full when the event needs it). "After"
//!   is causal (by sync id), not by wall clock, which may step back.
//! - History only grows: every state or outcome change emits a [`HistoryEntry`].

pub mod backoff;
pub mod model;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use crate::time::Timestamp;
pub use model::{EventType, Failure, Outcome, State, SyncKind};

/// Attempts of a failed sync that no event waits on, before it is left to the next request.
pub const MAX_UNWAITED_SYNC_ATTEMPTS: u32 = 5;

/// The timings of design §4 `[reconcile]`, plus the bounds the core enforces.
#[derive(Clone, Debug)]
pub struct Timings {
    pub notification_grace: Duration,
    pub poll_min: Duration,
    pub poll_max: Duration,
    pub resubmit_after: Duration,
    pub give_up_after: Duration,
    /// Seeds poll jitter; fixed in tests so schedules are exact.
    pub jitter_seed: u64,
    /// Polls and resubmissions in flight per token; more due events wait their turn.
    pub max_in_flight_per_token: usize,
    /// Backoff cap for retrying failed syncs.
    pub sync_retry_max: Duration,
    /// Least time between the starts of two runs of one (token, kind).
    pub sync_min_interval: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            notification_grace: Duration::from_secs(300),
            poll_min: Duration::from_secs(30),
            poll_max: Duration::from_secs(600),
            resubmit_after: Duration::from_secs(600),
            give_up_after: Duration::from_secs(86_400),
            jitter_seed: 0,
            max_in_flight_per_token: 10,
            sync_retry_max: Duration::from_secs(600),
            sync_min_interval: Duration::from_secs(30),
        }
    }
}

/// One tracked event as persisted. The store writes exactly this; recovery reads it back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRecord {
    pub event_id: String,
    pub token: String,
    pub event_type: EventType,
    pub state: State,
    pub outcome: Option<Outcome>,
    pub tracked_at: Timestamp,
    pub submitted_at: Timestamp,
    pub settled_at: Option<Timestamp>,
    /// When the current outcome was recorded; a settling sync must start at or after it.
    pub outcome_at: Option<Timestamp>,
    /// Entities Apple must process; from the request body or Event Status.
    pub num_requested: Option<u32>,
    pub num_completed: u32,
    /// Entities covered by SUCCESS / FAILURE notifications so far.
    pub notified_success: u32,
    pub notified_failure: u32,
    pub polls: u32,
    pub last_poll_at: Option<Timestamp>,
    pub backoff_attempt: u32,
    /// When the core next looks at this event; `None` once it no longer polls.
    pub next_check_at: Option<Timestamp>,
    /// The daemon holds the request body, so it may resubmit.
    pub has_request: bool,
    pub resubmitted: bool,
    pub superseded_by: Option<String>,
    pub supersedes: Option<String>,
    /// Removals are invisible to incremental assignment syncs, so disassociate and revoke
    /// events need a full one.
    pub needs_full_sync: bool,
}

/// What the tracker tells us about a new event.
#[derive(Clone, Debug)]
pub struct TrackRequest {
    pub event_id: String,
    pub token: String,
    pub event_type: EventType,
    pub submitted_at: Option<Timestamp>,
    pub num_requested: Option<u32>,
    pub has_request: bool,
    pub supersedes: Option<String>,
}

impl EventRecord {
    /// The record of a newly tracked event: pending, first check after the notification
    /// grace period counted from submission.
    pub fn new_tracked(now: Timestamp, req: TrackRequest, timings: &Timings) -> EventRecord {
        let submitted_at = req.submitted_at.unwrap_or(now).min(now);
        let first_check = submitted_at
            .saturating_add(timings.notification_grace)
            .max(now);
        EventRecord {
            event_id: req.event_id,
            token: req.token,
            event_type: req.event_type,
            state: State::Pending,
            outcome: None,
            tracked_at: now,
            submitted_at,
            settled_at: None,
            outcome_at: None,
            num_requested: req.num_requested,
            num_completed: 0,
            notified_success: 0,
            notified_failure: 0,
            polls: 0,
            last_poll_at: None,
            backoff_attempt: 0,
            next_check_at: Some(first_check),
            has_request: req.has_request,
            resubmitted: req.supersedes.is_some(),
            superseded_by: None,
            supersedes: req.supersedes,
            needs_full_sync: matches!(req.event_type, EventType::Disassociate | EventType::Revoke),
        }
    }
}

/// One history row: appended on every state or outcome change and notable step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    pub at: Timestamp,
    pub from: Option<State>,
    pub to: State,
    pub outcome: Option<Outcome>,
    pub cause: String,
}

/// One answered Event Status call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PollRecord {
    pub at: Timestamp,
    pub result: String,
    pub detail: Option<String>,
}

/// Where a recorded failure came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureSource {
    Notification,
    Status,
}

impl FailureSource {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureSource::Notification => "notification",
            FailureSource::Status => "status",
        }
    }
}

/// A change to persist in one transaction: the event's new snapshot plus what to append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub event: EventRecord,
    /// The row does not exist yet (a resubmission's new event).
    pub insert: bool,
    /// Copy the request body from this event (resubmission).
    pub copy_request_from: Option<String>,
    pub history: Vec<HistoryEntry>,
    pub failures: Vec<(FailureSource, Failure)>,
    pub applied_notifications: Vec<String>,
    pub poll: Option<PollRecord>,
    /// State or outcome changed: the outcome feed must show this event again.
    pub feed: bool,
}

/// An ASSET_MANAGEMENT / USER_MANAGEMENT notification, reduced to what the core needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotificationInput {
    pub notification_id: String,
    pub token: String,
    pub event_id: String,
    pub success: bool,
    /// Entities (assignments or users) this chunk covers.
    pub entities: u32,
    pub error: Option<Failure>,
}

/// The answer to an [`Action::Poll`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatusResult {
    Pending,
    Complete {
        num_requested: u32,
        num_completed: u32,
    },
    Failed {
        num_requested: u32,
        num_completed: u32,
        failures: Vec<Failure>,
    },
    /// Apple does not know the eventId (9708).
    NotFound,
    /// No answer this time (5xx, 429, timeout, unhealthy token): try again, not before
    /// `not_before` if given.
    Retry {
        not_before: Option<Timestamp>,
        reason: String,
    },
}

/// Effects for the adapters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Persist this change (one transaction with the others of the same turn).
    Persist(Box<Change>),
    /// Call Event Status; answer with [`Core::status_result`].
    Poll { token: String, event_id: String },
    /// Resubmit the stored request body; answer with [`Core::resubmit_result`].
    Resubmit {
        token: String,
        event_id: String,
        event_type: EventType,
    },
    /// Run a sync; answer with [`Core::sync_finished`].
    StartSync {
        sync_id: u64,
        token: String,
        kind: SyncKind,
        full: bool,
        cause: String,
    },
}

#[derive(Debug)]
struct Tracked {
    rec: EventRecord,
    in_flight: bool,
    /// Notification ids applied in this process's lifetime; the store dedupes across restarts.
    seen: Vec<String>,
    /// `next_sync_id` when the current outcome was recorded (0 if recorded before a
    /// restart): only runs with an id at or above it started after the outcome. Sync ids,
    /// unlike the wall clock, never run backwards.
    outcome_seq: u64,
    /// A [`Action::Resubmit`] for this event awaits its answer.
    resubmitting: bool,
}

#[derive(Default, Debug)]
struct TokenQueue {
    due: BTreeSet<(Timestamp, String)>,
    in_flight: usize,
}

#[derive(Clone, Copy, Debug)]
struct RunningSync {
    id: u64,
    full: bool,
}

#[derive(Default, Debug)]
struct SyncSlot {
    running: Option<RunningSync>,
    /// Another run is wanted after the current one (`Some(full)`).
    queued: Option<bool>,
    queued_cause: String,
    /// After a failed run, or too soon after the last start, the next may not start before
    /// this.
    retry_at: Option<Timestamp>,
    last_started: Option<Timestamp>,
    failures: u32,
    waiting: BTreeSet<String>,
}

/// The event core. See the module docs for the driving rule.
pub struct Core {
    timings: Timings,
    events: HashMap<String, Tracked>,
    queues: HashMap<String, TokenQueue>,
    syncs: HashMap<(String, SyncKind), SyncSlot>,
    sync_index: HashMap<u64, (String, SyncKind)>,
    next_sync_id: u64,
    actions: VecDeque<Action>,
    /// Events that settled while their resubmission was in flight: its answer is a live
    /// Apple event that must still be tracked.
    orphaned_resubmits: HashMap<String, EventRecord>,
}

impl Core {
    pub fn new(timings: Timings, next_sync_id: u64) -> Core {
        Core {
            timings,
            events: HashMap::new(),
            queues: HashMap::new(),
            syncs: HashMap::new(),
            sync_index: HashMap::new(),
            next_sync_id: next_sync_id.max(1),
            actions: VecDeque::new(),
            orphaned_resubmits: HashMap::new(),
        }
    }

    pub fn timings(&self) -> &Timings {
        &self.timings
    }

    /// Unsettled events held in memory.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn event(&self, event_id: &str) -> Option<&EventRecord> {
        self.events.get(event_id).map(|t| &t.rec)
    }

    /// Reloads an unsettled event after a restart, with its unapplied notifications. Nothing
    /// was in flight across the restart; an event in `syncing` asks for its sync again.
    pub fn recover(&mut self, now: Timestamp, rec: EventRecord, notes: Vec<NotificationInput>) {
        if rec.state == State::Settled || self.events.contains_key(&rec.event_id) {
            return;
        }
        let id = rec.event_id.clone();
        self.insert(rec);
        if let Some(t) = self.events.get(&id) {
            if t.rec.state == State::Syncing {
                let rec = t.rec.clone();
                self.enter_waiting(now, &rec, "recovered after restart");
            }
        }
        for n in notes {
            self.notification(now, n);
        }
    }

    /// A newly tracked event (already committed by the store), with notifications that
    /// arrived before it.
    pub fn track(&mut self, now: Timestamp, rec: EventRecord, notes: Vec<NotificationInput>) {
        if self.events.contains_key(&rec.event_id) || rec.state == State::Settled {
            return;
        }
        self.insert(rec);
        for n in notes {
            self.notification(now, n);
        }
    }

    fn insert(&mut self, mut rec: EventRecord) {
        if rec.state == State::Pending && rec.next_check_at.is_none() {
            rec.next_check_at = Some(rec.submitted_at);
        }
        if rec.state != State::Pending {
            rec.next_check_at = None;
        }
        if let Some(at) = rec.next_check_at {
            self.queues
                .entry(rec.token.clone())
                .or_default()
                .due
                .insert((at, rec.event_id.clone()));
        }
        self.events.insert(
            rec.event_id.clone(),
            Tracked {
                rec,
                in_flight: false,
                seen: Vec::new(),
                outcome_seq: 0,
                resubmitting: false,
            },
        );
    }

    /// Applies an ASSET_MANAGEMENT / USER_MANAGEMENT notification. Returns `false` when the
    /// event is not tracked here (the store keeps it for when it is).
    pub fn notification(&mut self, now: Timestamp, n: NotificationInput) -> bool {
        let Some(t) = self.events.get_mut(&n.event_id) else {
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
        let mut change = change_for(&t.rec);
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
            "notification {} {result} for {} entities",
            n.notification_id, n.entities
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
            // A REVOKE's request does not tell how many entities Apple will report (§2).
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
        self.after_change(now, before, change, next, cause);
        true
    }

    /// The answer to an [`Action::Poll`].
    pub fn status_result(&mut self, now: Timestamp, event_id: &str, result: StatusResult) {
        let Some(t) = self.events.get_mut(event_id) else {
            return;
        };
        if t.in_flight {
            t.in_flight = false;
            if let Some(q) = self.queues.get_mut(&t.rec.token) {
                q.in_flight = q.in_flight.saturating_sub(1);
            }
        }
        if t.rec.state != State::Pending {
            return;
        }
        let before = t.rec.clone();
        let mut change = change_for(&t.rec);
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
        change.poll = Some(PollRecord {
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
        self.after_change(now, before, change, next, cause);
    }

    /// The answer to an [`Action::Resubmit`]: the new eventId, or why it failed.
    pub fn resubmit_result(
        &mut self,
        now: Timestamp,
        old_id: &str,
        result: Result<String, String>,
    ) {
        if let Some(old) = self.orphaned_resubmits.remove(old_id) {
            // The old event settled meanwhile (it is final, so it is not linked), but Apple
            // holds the new event: track it.
            if let Ok(new_id) = result {
                if !self.events.contains_key(&new_id) && new_id != old_id {
                    self.track_resubmission(now, &old, new_id);
                }
            }
            return;
        }
        let Some(t) = self.events.get_mut(old_id) else {
            return;
        };
        t.resubmitting = false;
        if t.in_flight {
            t.in_flight = false;
            if let Some(q) = self.queues.get_mut(&t.rec.token) {
                q.in_flight = q.in_flight.saturating_sub(1);
            }
        }
        let before = t.rec.clone();
        let change = change_for(&t.rec);
        match result {
            Ok(new_id) if !self.events.contains_key(&new_id) && new_id != old_id => {
                let Some(t) = self.events.get_mut(old_id) else {
                    return;
                };
                let rec = &mut t.rec;
                rec.superseded_by = Some(new_id.clone());
                let old = rec.clone();
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
    fn track_resubmission(&mut self, now: Timestamp, old: &EventRecord, new_id: String) {
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
        self.actions.push_back(Action::Persist(Box::new(Change {
            event: new_rec.clone(),
            insert: true,
            copy_request_from: Some(old_id.clone()),
            history: vec![HistoryEntry {
                at: now,
                from: None,
                to: State::Pending,
                outcome: None,
                cause: format!("tracked as the resubmission of {old_id}"),
            }],
            failures: vec![],
            applied_notifications: vec![],
            poll: None,
            feed: true,
        })));
        self.insert(new_rec);
    }

    /// Asks for a sync of `kind` for `token`. Coalesced: at most one runs per (token, kind);
    /// requests while one runs fold into a single follow-up run.
    pub fn request_sync(
        &mut self,
        now: Timestamp,
        token: &str,
        kind: SyncKind,
        full: bool,
        cause: &str,
    ) {
        let key = (token.to_string(), kind);
        let slot = self.syncs.entry(key.clone()).or_default();
        let full = full || !kind.supports_incremental();
        match slot.queued {
            Some(f) => slot.queued = Some(f || full),
            None => {
                slot.queued = Some(full);
                slot.queued_cause = cause.to_string();
            }
        }
        self.maybe_start_sync(now, &key);
    }

    fn maybe_start_sync(&mut self, now: Timestamp, key: &(String, SyncKind)) {
        let Some(slot) = self.syncs.get_mut(key) else {
            return;
        };
        if slot.running.is_some() || slot.retry_at.is_some_and(|r| r > now) || slot.queued.is_none()
        {
            return;
        }
        // Outcomes trickle in; starting runs back to back would fetch the same pages again and
        // again. Waiting out `sync_min_interval` lets one run cover all of them.
        if let Some(last) = slot.last_started {
            let earliest = last.saturating_add(self.timings.sync_min_interval);
            if now < earliest && now >= last {
                slot.retry_at = Some(earliest);
                return;
            }
        }
        let Some(full) = slot.queued.take() else {
            return;
        };
        slot.retry_at = None;
        slot.last_started = Some(now);
        let id = self.next_sync_id;
        self.next_sync_id += 1;
        slot.running = Some(RunningSync { id, full });
        self.sync_index.insert(id, key.clone());
        self.actions.push_back(Action::StartSync {
            sync_id: id,
            token: key.0.clone(),
            kind: key.1,
            full,
            cause: std::mem::take(&mut slot.queued_cause),
        });
    }

    /// A sync run ended. On success every event waiting for a sync of this kind whose
    /// outcome predates the run's start settles.
    pub fn sync_finished(&mut self, now: Timestamp, sync_id: u64, ok: bool) {
        let Some(key) = self.sync_index.remove(&sync_id) else {
            return;
        };
        let Some(slot) = self.syncs.get_mut(&key) else {
            return;
        };
        let Some(run) = slot.running.filter(|r| r.id == sync_id) else {
            return;
        };
        slot.running = None;
        if ok {
            slot.failures = 0;
            let events = &self.events;
            let covered: Vec<String> = slot
                .waiting
                .iter()
                .filter(|id| {
                    events.get(*id).is_some_and(|t| {
                        t.rec.outcome_at.is_some()
                            && t.outcome_seq <= run.id
                            && (run.full || !t.rec.needs_full_sync)
                    })
                })
                .cloned()
                .collect();
            for id in &covered {
                slot.waiting.remove(id);
            }
            for id in covered {
                if let Some(t) = self.events.get(&id) {
                    let before = t.rec.clone();
                    let change = change_for(&t.rec);
                    self.after_change(
                        now,
                        before,
                        change,
                        Next::Settle,
                        format!("{} sync {sync_id} finished", key.1),
                    );
                }
            }
        } else {
            slot.failures = slot.failures.saturating_add(1);
            let delay = backoff::delay(
                slot.failures - 1,
                self.timings.poll_min,
                self.timings.sync_retry_max,
                backoff::seed_for(self.timings.jitter_seed, &key.0) ^ sync_id,
            );
            slot.retry_at = Some(now.saturating_add(delay));
            // Run again later, keeping the fuller of the two: always while events wait on it;
            // otherwise (an assets sync for counts, a hint) a bounded number of times.
            if !slot.waiting.is_empty()
                || slot.queued.is_some()
                || slot.failures < MAX_UNWAITED_SYNC_ATTEMPTS
            {
                slot.queued = Some(slot.queued.unwrap_or(false) || run.full);
                if slot.queued_cause.is_empty() {
                    slot.queued_cause = format!("retry after failed sync {sync_id}");
                }
            }
        }
        self.maybe_start_sync(now, &key);
    }

    /// Time passes: fire due polls, give-ups and sync retries.
    pub fn timeout(&mut self, now: Timestamp) {
        let tokens: Vec<String> = self.queues.keys().cloned().collect();
        for token in tokens {
            while let Some(q) = self.queues.get_mut(&token) {
                if q.in_flight >= self.timings.max_in_flight_per_token {
                    break;
                }
                let Some((at, id)) = q.due.first().cloned() else {
                    break;
                };
                if at > now {
                    break;
                }
                q.due.pop_first();
                self.fire(now, &id);
            }
        }
        let keys: Vec<(String, SyncKind)> = self
            .syncs
            .iter()
            .filter(|(_, s)| s.retry_at.is_some_and(|r| r <= now) && s.running.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            if let Some(s) = self.syncs.get_mut(&k) {
                s.retry_at = None;
            }
            self.maybe_start_sync(now, &k);
        }
    }

    fn fire(&mut self, now: Timestamp, id: &str) {
        let Some(t) = self.events.get_mut(id) else {
            return;
        };
        if t.rec.state != State::Pending || t.in_flight {
            return;
        }
        let give_up_at = t
            .rec
            .submitted_at
            .saturating_add(self.timings.give_up_after);
        if now >= give_up_at {
            let before = t.rec.clone();
            let change = change_for(&t.rec);
            t.rec.outcome = Some(Outcome::TimedOut);
            t.rec.outcome_at = Some(now);
            let cause = format!(
                "still pending after {}",
                crate::time::format_duration(self.timings.give_up_after)
            );
            self.after_change(now, before, change, Next::Sync, cause);
            return;
        }
        // Apple's floor between polls holds even if the clock went backwards.
        if let Some(last) = t.rec.last_poll_at {
            let earliest = last.saturating_add(self.timings.poll_min);
            if now < earliest || now < last {
                let at = if now < last {
                    now.saturating_add(self.timings.poll_min)
                } else {
                    earliest
                };
                t.rec.next_check_at = Some(at);
                self.queues
                    .entry(t.rec.token.clone())
                    .or_default()
                    .due
                    .insert((at, id.to_string()));
                return;
            }
        }
        let mut change = change_for(&t.rec);
        t.in_flight = true;
        t.rec.polls = t.rec.polls.saturating_add(1);
        t.rec.last_poll_at = Some(now);
        t.rec.next_check_at = None;
        let token = t.rec.token.clone();
        change.event = t.rec.clone();
        self.queues.entry(token.clone()).or_default().in_flight += 1;
        self.actions.push_back(Action::Persist(Box::new(change)));
        self.actions.push_back(Action::Poll {
            token,
            event_id: id.to_string(),
        });
    }

    /// Finishes a change: moves the event per `next`, reschedules it, appends history and
    /// emits the persist action.
    fn after_change(
        &mut self,
        now: Timestamp,
        before: EventRecord,
        mut change: Change,
        next: Next,
        cause: String,
    ) {
        let id = before.event_id.clone();
        let timings = self.timings.clone();
        let next_sync_id = self.next_sync_id;
        let Some(t) = self.events.get_mut(&id) else {
            return;
        };
        if t.rec.outcome_at != before.outcome_at {
            t.outcome_seq = next_sync_id;
        }
        // Take the event out of the timer index; it is put back below if it still polls.
        if let Some(at) = t.rec.next_check_at.or(before.next_check_at) {
            if let Some(q) = self.queues.get_mut(&t.rec.token) {
                q.due.remove(&(at, id.clone()));
            }
        }
        let mut resubmit = false;
        match next {
            Next::Settle => {
                t.rec.state = State::Settled;
                t.rec.settled_at = Some(now);
                t.rec.next_check_at = None;
            }
            Next::Sync => {
                t.rec.state = State::Syncing;
                t.rec.next_check_at = None;
            }
            Next::Keep | Next::Confirm | Next::RetryAt(_) | Next::Resubmit => {
                if t.rec.state == State::Pending && !t.in_flight {
                    let floor = t
                        .rec
                        .last_poll_at
                        .map(|l| l.saturating_add(timings.poll_min))
                        .unwrap_or(Timestamp::ZERO);
                    let backoff = backoff::delay(
                        t.rec.backoff_attempt.saturating_sub(1),
                        timings.poll_min,
                        timings.poll_max,
                        backoff::seed_for(timings.jitter_seed, &id),
                    );
                    // Wake at the resubmission and give-up deadlines, not past them.
                    let mut deadline = t.rec.submitted_at.saturating_add(timings.give_up_after);
                    if t.rec.has_request && !t.rec.resubmitted && t.rec.superseded_by.is_none() {
                        deadline =
                            deadline.min(t.rec.submitted_at.saturating_add(timings.resubmit_after));
                    }
                    let at = match next {
                        Next::Confirm => now,
                        Next::RetryAt(nb) => now
                            .saturating_add(backoff)
                            .max(nb.unwrap_or(Timestamp::ZERO)),
                        _ => match before.next_check_at {
                            Some(at) => at,
                            None => now.saturating_add(backoff).min(deadline.max(now)),
                        },
                    }
                    .max(floor);
                    t.rec.next_check_at = Some(at);
                    if matches!(next, Next::Resubmit) {
                        resubmit = true;
                        t.rec.resubmitted = true;
                        t.in_flight = true;
                        t.resubmitting = true;
                    }
                }
            }
        }
        let changed = t.rec.state != before.state || t.rec.outcome != before.outcome;
        if changed || !cause.is_empty() {
            change.history.push(HistoryEntry {
                at: now,
                from: Some(before.state),
                to: t.rec.state,
                outcome: t.rec.outcome,
                cause: cause.clone(),
            });
        }
        change.feed = changed;
        change.event = t.rec.clone();
        let rec = t.rec.clone();
        if resubmit {
            self.queues.entry(rec.token.clone()).or_default().in_flight += 1;
        }
        // While a resubmission is in flight its answer puts the event back on the timer.
        if let (Some(at), false, State::Pending) = (rec.next_check_at, resubmit, rec.state) {
            self.queues
                .entry(rec.token.clone())
                .or_default()
                .due
                .insert((at, id.clone()));
        }
        self.actions.push_back(Action::Persist(Box::new(change)));
        if resubmit {
            self.actions.push_back(Action::Resubmit {
                token: rec.token.clone(),
                event_id: id.clone(),
                event_type: rec.event_type,
            });
        }
        match rec.state {
            State::Settled => {
                self.remove_waiting(&rec);
                if let Some(t) = self.events.remove(&id) {
                    if t.resubmitting {
                        self.orphaned_resubmits.insert(id.clone(), t.rec.clone());
                    }
                    if t.in_flight {
                        if let Some(q) = self.queues.get_mut(&rec.token) {
                            q.in_flight = q.in_flight.saturating_sub(1);
                        }
                    }
                }
            }
            State::Syncing if changed || before.outcome_at != rec.outcome_at => {
                self.enter_waiting(now, &rec, &cause);
            }
            _ => {}
        }
    }

    fn enter_waiting(&mut self, now: Timestamp, rec: &EventRecord, cause: &str) {
        let settling = rec.event_type.settling_sync();
        self.syncs
            .entry((rec.token.clone(), settling))
            .or_default()
            .waiting
            .insert(rec.event_id.clone());
        let why = format!("event {} ({cause})", rec.event_id);
        for kind in rec.event_type.sync_kinds() {
            let full = rec.needs_full_sync && *kind == SyncKind::Assignments;
            self.request_sync(now, &rec.token, *kind, full, &why);
        }
    }

    fn remove_waiting(&mut self, rec: &EventRecord) {
        if let Some(slot) = self
            .syncs
            .get_mut(&(rec.token.clone(), rec.event_type.settling_sync()))
        {
            slot.waiting.remove(&rec.event_id);
        }
    }

    /// Drains the next effect.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next time [`Core::timeout`] has work, if any. Tokens at their in-flight limit
    /// do not count: their due events wait for an answer, not for time.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let polls = self
            .queues
            .values()
            .filter(|q| q.in_flight < self.timings.max_in_flight_per_token)
            .filter_map(|q| q.due.first().map(|(at, _)| *at))
            .min();
        let syncs = self
            .syncs
            .values()
            .filter(|s| s.running.is_none())
            .filter_map(|s| s.retry_at)
            .min();
        match (polls, syncs) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Events due at or before `now`, without firing them (for inspection and benchmarks).
    pub fn due_count(&self, now: Timestamp) -> usize {
        self.queues
            .values()
            .map(|q| q.due.range(..=(now, String::from("\u{10FFFF}"))).count())
            .sum()
    }

    /// Sync state for inspection: (running sync id, queued, waiting events).
    pub fn sync_state(&self, token: &str, kind: SyncKind) -> Option<(Option<u64>, bool, usize)> {
        self.syncs
            .get(&(token.to_string(), kind))
            .map(|s| (s.running.map(|r| r.id), s.queued.is_some(), s.waiting.len()))
    }
}

enum Next {
    Keep,
    /// Check Event Status as soon as Apple's floor allows.
    Confirm,
    RetryAt(Option<Timestamp>),
    Resubmit,
    Sync,
    Settle,
}

fn change_for(rec: &EventRecord) -> Change {
    Change {
        event: rec.clone(),
        insert: false,
        copy_request_from: None,
        history: Vec::new(),
        failures: Vec::new(),
        applied_notifications: Vec::new(),
        poll: None,
        feed: false,
    }
}

#[cfg(test)]
mod tests;
