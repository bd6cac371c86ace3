//! The values the core takes and emits: timings, event records, changes to persist, inputs
//! and actions. Plain data; the rules live in `core/mod.rs` and `core/sync.rs`.

use std::time::Duration;

use super::model::{EventType, Failure, Outcome, State, SyncKind};
use crate::time::Timestamp;

/// The timings of config/vpp-reconciler.toml `[reconcile]`, plus the bounds the core enforces.
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
    /// Longest a run of a busy token (polls using its rate limit) is deferred after the
    /// last start, so one run covers many outcomes.
    pub sync_max_staleness: Duration,
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
            sync_max_staleness: Duration::from_secs(60),
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
    pub polls: Vec<PollRecord>,
    /// State or outcome changed: the outcome feed must show this event again.
    pub feed: bool,
    /// The request body the tracker passed (new events only).
    pub request_body: Option<String>,
    /// Append the rows only and leave the event's row alone: a retry of rows whose event
    /// has since been written with a newer snapshot.
    pub rows_only: bool,
}

impl Change {
    /// An empty change of `rec`'s current snapshot.
    pub fn of(rec: &EventRecord) -> Change {
        Change {
            event: rec.clone(),
            insert: false,
            copy_request_from: None,
            history: Vec::new(),
            failures: Vec::new(),
            applied_notifications: Vec::new(),
            polls: Vec::new(),
            feed: false,
            request_body: None,
            rows_only: false,
        }
    }

    /// Folds a later change of the same event into this one (for a retried commit): the
    /// later snapshot wins, the appended rows add up.
    pub fn absorb(&mut self, later: Change) {
        self.event = later.event;
        self.insert |= later.insert;
        self.copy_request_from = self.copy_request_from.take().or(later.copy_request_from);
        self.history.extend(later.history);
        self.failures.extend(later.failures);
        for n in later.applied_notifications {
            if !self.applied_notifications.contains(&n) {
                self.applied_notifications.push(n);
            }
        }
        self.polls.extend(later.polls);
        self.feed |= later.feed;
        self.request_body = self.request_body.take().or(later.request_body);
        self.rows_only &= later.rows_only;
    }
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
    /// Persist this change, with the others of the same turn; answer with
    /// [`Core::persisted`]. The turn's other actions for this event are sent only once it is
    /// committed (write-ahead).
    Persist(Box<Change>),
    /// Call Event Status; answer with [`Core::status_result`].
    Poll { token: String, event_id: String },
    /// Resubmit the stored request body; answer with [`Core::resubmit_result`].
    Resubmit {
        token: String,
        event_id: String,
        event_type: EventType,
    },
    /// Run a sync; answer with [`Core::sync_finished`]. Its run row is written with the
    /// turn's changes.
    StartSync {
        sync_id: u64,
        token: String,
        kind: SyncKind,
        full: bool,
        cause: String,
    },
}

/// How a sync run ended, as the core needs to know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncOutcome {
    /// The mirror holds what Apple had when the run started.
    Ok,
    /// Data kept changing under a full read, or a record of Apple's answer did not decode:
    /// what was read is kept, but it proves no removals; retried with backoff.
    Unreliable,
    /// Apple refused the token (expired, revoked, unauthorized): no point retrying soon.
    TokenProblem(String),
    /// Network, 5xx, rate limit, store: retried with backoff.
    Transient(String),
}

impl SyncOutcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, SyncOutcome::Ok)
    }

    /// The `result` label of metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            SyncOutcome::Ok => "ok",
            SyncOutcome::Unreliable => "unreliable",
            SyncOutcome::TokenProblem(_) => "token_problem",
            SyncOutcome::Transient(_) => "failed",
        }
    }
}

/// What [`Core::track`](super::Core::track) decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrackDecision {
    /// New: a [`Action::Persist`] inserting it is queued; it is durable once that commits.
    Created(EventRecord),
    /// Already tracked with the same token and type; `durable` tells whether its insert has
    /// committed (if not, answer the tracker after it does).
    Existing { record: EventRecord, durable: bool },
    /// The eventId is tracked with another token or type.
    Conflict {
        token: String,
        event_type: EventType,
    },
}

/// The store's answer to one [`Action::Persist`].
#[derive(Debug)]
pub struct Persisted {
    pub change: Change,
    /// `None` when committed; otherwise why not.
    pub error: Option<String>,
}
