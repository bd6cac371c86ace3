//! A simulated world around the core: a clock, a model of Apple (event truths, notification
//! delivery, Event Status answers, resubmissions, syncs), a store that keeps notifications
//! for events not tracked yet, and a log of every input with the actions it produced.
//!
//! Time: `real` is the simulation's monotonic time in ms since [`T0`]; the core sees the
//! wall clock `T0 + real + skew`, where `skew` may jump (backwards) to model clock changes.
//! The loop jumps straight to the next interesting instant (next scheduled input or
//! `poll_timeout`), so days pass in a few thousand steps.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use crate::core::{
    Action, Change, Core, EventRecord, EventType, Failure, NotificationInput, Outcome, State,
    StatusResult, SyncKind, SyncOutcome, Timings, TrackRequest,
};
use crate::time::Timestamp;

/// 2026-11-25T10:00:00Z, the simulation's origin.
pub const T0: i64 = 1_795_600_800_000;
pub const SEC: i64 = 1_000;
pub const MIN: i64 = 60 * SEC;
pub const HOUR: i64 = 60 * MIN;
pub const DAY: i64 = 24 * HOUR;

/// The wall-clock timestamp `ms` after [`T0`].
/// The insert the core emits when an event is tracked (the tests look at what follows).
pub fn is_track_insert(c: &Change) -> bool {
    c.insert && c.copy_request_from.is_none()
}

pub fn ts(ms: i64) -> Timestamp {
    Timestamp(T0 + ms)
}

/// `ts` back to ms since [`T0`].
pub fn rel(t: Timestamp) -> i64 {
    t.0 - T0
}

/// The design's default timings with a fixed jitter seed.
pub fn timings() -> Timings {
    Timings {
        notification_grace: Duration::from_secs(300),
        poll_min: Duration::from_secs(30),
        poll_max: Duration::from_secs(600),
        resubmit_after: Duration::from_secs(600),
        give_up_after: Duration::from_secs(86_400),
        jitter_seed: 7,
        max_in_flight_per_token: 10,
        sync_retry_max: Duration::from_secs(600),
        sync_min_interval: Duration::from_secs(30),
        sync_max_staleness: Duration::from_secs(300),
    }
}

/// What Apple eventually says about an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Truth {
    Complete,
    Failed,
    /// PENDING forever (within any horizon a test runs).
    Never,
    /// Apple does not know the eventId (9708).
    Unknown,
}

impl Truth {
    /// The outcome the core must end with.
    pub fn outcome(self) -> Outcome {
        match self {
            Truth::Complete => Outcome::Complete,
            Truth::Failed => Outcome::Failed,
            Truth::Never => Outcome::TimedOut,
            Truth::Unknown => Outcome::NotFound,
        }
    }
}

/// A scripted Event Status answer that precedes the truthful ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scripted {
    /// A 5xx: `Retry`, with `not_before` this many ms after the wall clock if given.
    Retry(Option<i64>),
}

/// Apple's view of one event.
#[derive(Clone, Debug)]
pub struct AppleEvent {
    pub truth: Truth,
    /// Real time at which the event leaves PENDING.
    pub final_at: i64,
    pub num_requested: u32,
    pub num_completed: u32,
    pub failures: Vec<Failure>,
    /// Answers before the truthful ones, one per poll.
    pub script: VecDeque<Scripted>,
}

impl AppleEvent {
    pub fn new(truth: Truth, final_at: i64, num_requested: u32) -> AppleEvent {
        let (num_completed, failures) = match truth {
            Truth::Failed => (
                num_requested.saturating_sub(1),
                vec![failure(9609, "u-failed")],
            ),
            _ => (num_requested, vec![]),
        };
        AppleEvent {
            truth,
            final_at,
            num_requested,
            num_completed,
            failures,
            script: VecDeque::new(),
        }
    }
}

/// What a resubmission of an event yields: the new id and Apple's view of it, with
/// `final_at` relative to the moment the resubmission reaches Apple, and notification
/// chunks `(delay after final, success, entities)`.
#[derive(Clone, Debug)]
pub struct ResubmitPlan {
    pub new_id: String,
    pub apple: AppleEvent,
    pub notes: Vec<(i64, bool, u32)>,
}

pub fn failure(number: i64, user: &str) -> Failure {
    Failure {
        error_number: number,
        error_message: format!("error {number}"),
        error_info: Some(serde_json::json!({ "clientUserIds": [user] })),
    }
}

pub fn track_req(id: &str, token: &str, ty: EventType, num: Option<u32>) -> TrackRequest {
    TrackRequest {
        event_id: id.to_string(),
        token: token.to_string(),
        event_type: ty,
        submitted_at: None,
        num_requested: num,
        has_request: false,
        supersedes: None,
    }
}

pub fn note(
    nid: &str,
    token: &str,
    event: &str,
    success: bool,
    entities: u32,
) -> NotificationInput {
    NotificationInput {
        notification_id: nid.to_string(),
        token: token.to_string(),
        event_id: event.to_string(),
        success,
        entities,
        error: (!success).then(|| failure(9609, "u1")),
    }
}

#[derive(Clone, Debug)]
pub enum Input {
    Track(TrackRequest),
    Notify(NotificationInput),
    Status(String, StatusResult),
    Resubmitted(String, Result<String, String>),
    SyncDone(u64, bool),
    RequestSync(String, SyncKind, bool),
    /// The wall clock's offset from real time becomes this.
    Skew(i64),
    Timeout,
    /// kill -9 and restart: answers in flight are lost; a new core recovers every unsettled
    /// event from its last persisted snapshot.
    Crash,
}

/// One input and the actions it produced.
#[derive(Clone, Debug)]
pub struct Step {
    pub real: i64,
    pub wall: Timestamp,
    pub input: Input,
    /// Notifications handed to the core with this input.
    pub fed: usize,
    pub actions: Vec<Action>,
}

#[derive(Clone, Debug)]
pub struct SyncRun {
    pub id: u64,
    pub token: String,
    pub kind: SyncKind,
    pub full: bool,
    pub cause: String,
    /// Index of the step that emitted the StartSync.
    pub start_step: usize,
    pub start_real: i64,
    pub start_wall: Timestamp,
    pub end_real: Option<i64>,
    pub ok: Option<bool>,
}

#[derive(Clone, Debug)]
pub struct PollLog {
    pub event_id: String,
    pub real: i64,
    pub wall: Timestamp,
}

pub struct Harness {
    pub core: Core,
    pub real: i64,
    pub skew: i64,
    seq: u64,
    inputs: BTreeMap<(i64, u64), Input>,
    pub apple: HashMap<String, AppleEvent>,
    pub resubmit_plans: HashMap<String, ResubmitPlan>,
    /// Results of successive sync runs; `true` once exhausted.
    pub sync_results: VecDeque<bool>,
    pub sync_duration: i64,
    pub poll_latency: i64,
    pub resubmit_latency: i64,
    /// Tracked (or inserted by resubmission) events: the record the core started from.
    pub initial: HashMap<String, EventRecord>,
    /// Notifications the store keeps for events not tracked yet.
    pub held: HashMap<String, Vec<NotificationInput>>,
    pub settled: HashSet<String>,
    pub steps: Vec<Step>,
    pub syncs: Vec<SyncRun>,
    pub polls: Vec<PollLog>,
    /// Outstanding Poll / Resubmit requests per event.
    pub outstanding: HashMap<String, usize>,
    pub iterations: usize,
    pub max_iterations: usize,
    /// Set when the clock ever jumped, so wall-time comparisons are only causal hints.
    pub clock_jumped: bool,
    pub applied_before_crash: HashSet<String>,
    /// Resubmissions whose answer was lost in a crash.
    pub lost_in_crash: HashSet<String>,
    pub crashes: usize,
}

impl Harness {
    pub fn new(timings: Timings) -> Harness {
        Harness {
            core: Core::new(timings, 1),
            real: 0,
            skew: 0,
            seq: 0,
            inputs: BTreeMap::new(),
            apple: HashMap::new(),
            resubmit_plans: HashMap::new(),
            sync_results: VecDeque::new(),
            sync_duration: MIN,
            poll_latency: 0,
            resubmit_latency: SEC,
            initial: HashMap::new(),
            held: HashMap::new(),
            settled: HashSet::new(),
            steps: Vec::new(),
            syncs: Vec::new(),
            polls: Vec::new(),
            outstanding: HashMap::new(),
            iterations: 0,
            max_iterations: 200_000,
            clock_jumped: false,
            applied_before_crash: HashSet::new(),
            lost_in_crash: HashSet::new(),
            crashes: 0,
        }
    }

    pub fn wall(&self) -> Timestamp {
        ts(self.real + self.skew)
    }

    pub fn at(&mut self, real: i64, input: Input) {
        self.seq += 1;
        self.inputs.insert((real, self.seq), input);
    }

    /// Apple learns of `id` (with `apple`'s truth) and the tracker tracks it at `real`.
    pub fn event(&mut self, real: i64, req: TrackRequest, apple: AppleEvent) {
        self.apple.insert(req.event_id.clone(), apple);
        self.at(real, Input::Track(req));
    }

    pub fn notify(&mut self, real: i64, n: NotificationInput) {
        self.at(real, Input::Notify(n));
    }

    /// Runs the world until real time `end`.
    pub fn run_until(&mut self, end: i64) {
        loop {
            self.iterations += 1;
            assert!(
                self.iterations <= self.max_iterations,
                "runaway: {} iterations by real time {}",
                self.iterations,
                self.real
            );
            let next_input = self.inputs.keys().next().map(|k| k.0);
            let next_timer = self
                .core
                .poll_timeout()
                .map(|t| (rel(t) - self.skew).max(self.real));
            let next = match (next_input, next_timer) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            match next {
                Some(n) if n <= end => self.real = self.real.max(n),
                _ => {
                    self.real = self.real.max(end);
                    return;
                }
            }
            while let Some(entry) = self.inputs.first_entry() {
                if entry.key().0 > self.real {
                    break;
                }
                let input = entry.remove();
                self.apply(input);
            }
            let now = self.wall();
            if self.core.poll_timeout().is_some_and(|t| t <= now) {
                self.apply(Input::Timeout);
                let after = self.core.poll_timeout();
                assert!(
                    !matches!(after, Some(t) if t <= now),
                    "busy spin: poll_timeout {after:?} not after timeout({now:?})"
                );
            }
        }
    }

    pub fn apply(&mut self, input: Input) {
        let now = self.wall();
        let mut fed = 1;
        match &input {
            Input::Track(req) => {
                let rec = EventRecord::new_tracked(now, req.clone(), self.core.timings());
                self.initial.insert(rec.event_id.clone(), rec.clone());
                let notes = self.held.remove(&rec.event_id).unwrap_or_default();
                // The insert, then each early notification.
                fed = notes.len() + 1;
                self.core.track(now, rec, None);
                // The store hands early notifications over once the insert commits.
                for n in notes {
                    self.core.notification(now, n);
                }
            }
            Input::Notify(n) if self.applied_before_crash.contains(&n.notification_id) => {
                // The store's dedup: applied in an earlier life of the daemon.
            }
            Input::Notify(n) => {
                if !self.core.notification(now, n.clone())
                    && !self.initial.contains_key(&n.event_id)
                {
                    let held = self.held.entry(n.event_id.clone()).or_default();
                    if !held.iter().any(|h| h.notification_id == n.notification_id) {
                        held.push(n.clone());
                    }
                }
            }
            Input::Status(id, r) => {
                self.answered(id);
                self.core.status_result(now, id, r.clone());
            }
            Input::Resubmitted(id, r) => {
                self.answered(id);
                self.core.resubmit_result(now, id, r.clone());
            }
            Input::SyncDone(id, ok) => {
                let real = self.real;
                if let Some(run) = self.syncs.iter_mut().find(|s| s.id == *id) {
                    run.end_real = Some(real);
                    run.ok = Some(*ok);
                }
                let outcome = if *ok {
                    SyncOutcome::Ok
                } else {
                    SyncOutcome::Transient("test".into())
                };
                self.core.sync_finished(now, *id, outcome);
            }
            Input::RequestSync(token, kind, full) => {
                self.core.request_sync(now, token, *kind, *full, "test");
            }
            Input::Skew(s) => {
                self.clock_jumped |= *s != self.skew;
                self.skew = *s;
            }
            Input::Timeout => self.core.timeout(now),
            Input::Crash => self.crash(now),
        }
        let mut actions = Vec::new();
        while let Some(a) = self.core.poll_action() {
            assert!(actions.len() < 100_000, "runaway actions");
            actions.push(a);
        }
        let step = self.steps.len();
        for a in &actions {
            self.handle(step, a);
        }
        self.steps.push(Step {
            real: self.real,
            wall: now,
            input,
            fed,
            actions,
        });
    }

    fn crash(&mut self, now: Timestamp) {
        let lost: Vec<(i64, u64)> = self
            .inputs
            .iter()
            .filter(|(_, i)| {
                matches!(
                    i,
                    Input::Status(..) | Input::Resubmitted(..) | Input::SyncDone(..)
                )
            })
            .map(|(k, _)| *k)
            .collect();
        for k in lost {
            // A resubmission Apple accepted but whose answer died with us is untrackable.
            if let Some(Input::Resubmitted(_, Ok(new_id))) = self.inputs.remove(&k) {
                self.apple.remove(&new_id);
                self.lost_in_crash.insert(new_id);
            }
        }
        self.outstanding.clear();
        for (_, c) in self.all_changes() {
            self.applied_before_crash
                .extend(c.applied_notifications.iter().cloned());
        }
        let next_sync_id = self.syncs.iter().map(|s| s.id).max().unwrap_or(0) + 1;
        self.core = Core::new(self.core.timings().clone(), next_sync_id);
        let mut ids: Vec<String> = self
            .initial
            .keys()
            .filter(|id| !self.settled.contains(*id))
            .cloned()
            .collect();
        ids.sort();
        for id in ids {
            let rec = self.last(&id);
            self.core.recover(now, rec, vec![]);
        }
        self.crashes += 1;
    }

    fn all_changes(&self) -> Vec<(usize, Change)> {
        let mut out = Vec::new();
        for (i, s) in self.steps.iter().enumerate() {
            for a in &s.actions {
                if let Action::Persist(c) = a {
                    if !is_track_insert(c) {
                        out.push((i, (**c).clone()));
                    }
                }
            }
        }
        out
    }

    fn answered(&mut self, id: &str) {
        if let Some(n) = self.outstanding.get_mut(id) {
            *n = n.saturating_sub(1);
        }
    }

    fn handle(&mut self, step: usize, a: &Action) {
        let real = self.real;
        let wall = self.wall();
        match a {
            Action::Persist(c) => {
                let id = c.event.event_id.clone();
                if c.insert {
                    self.initial
                        .entry(id.clone())
                        .or_insert_with(|| c.event.clone());
                    // The store kept notifications for this id; the executor feeds them in.
                    if let Some(notes) = self.held.remove(&id) {
                        for n in notes {
                            self.at(real, Input::Notify(n));
                        }
                    }
                }
                if c.event.state == State::Settled {
                    self.settled.insert(id);
                }
            }
            Action::Poll { event_id, .. } => {
                *self.outstanding.entry(event_id.clone()).or_default() += 1;
                self.polls.push(PollLog {
                    event_id: event_id.clone(),
                    real,
                    wall,
                });
                let r = self.answer(event_id);
                self.at(real + self.poll_latency, Input::Status(event_id.clone(), r));
            }
            Action::Resubmit { event_id, .. } => {
                *self.outstanding.entry(event_id.clone()).or_default() += 1;
                let r = match self.resubmit_plans.get(event_id).cloned() {
                    Some(plan) => {
                        let mut apple = plan.apple.clone();
                        apple.final_at += real;
                        for (i, (delay, success, entities)) in plan.notes.iter().enumerate() {
                            let n = note(
                                &format!("{}-n{i}", plan.new_id),
                                &self.token_of(event_id),
                                &plan.new_id,
                                *success,
                                *entities,
                            );
                            self.at(apple.final_at + delay, Input::Notify(n));
                        }
                        self.apple.insert(plan.new_id.clone(), apple);
                        Ok(plan.new_id)
                    }
                    None => Err("no plan".to_string()),
                };
                self.at(
                    real + self.resubmit_latency,
                    Input::Resubmitted(event_id.clone(), r),
                );
            }
            Action::StartSync {
                sync_id,
                token,
                kind,
                full,
                cause,
            } => {
                let ok = self.sync_results.pop_front().unwrap_or(true);
                self.syncs.push(SyncRun {
                    id: *sync_id,
                    token: token.clone(),
                    kind: *kind,
                    full: *full,
                    cause: cause.clone(),
                    start_step: step,
                    start_real: real,
                    start_wall: wall,
                    end_real: None,
                    ok: None,
                });
                self.at(real + self.sync_duration, Input::SyncDone(*sync_id, ok));
            }
        }
    }

    fn token_of(&self, id: &str) -> String {
        self.initial
            .get(id)
            .map(|r| r.token.clone())
            .unwrap_or_default()
    }

    /// Apple's Event Status answer for `id` now.
    fn answer(&mut self, id: &str) -> StatusResult {
        let wall = self.wall();
        let real = self.real;
        let Some(ev) = self.apple.get_mut(id) else {
            return StatusResult::NotFound;
        };
        if let Some(Scripted::Retry(nb)) = ev.script.pop_front() {
            return StatusResult::Retry {
                not_before: nb.map(|d| Timestamp(wall.0 + d)),
                reason: "HTTP 503".to_string(),
            };
        }
        match ev.truth {
            Truth::Unknown => StatusResult::NotFound,
            Truth::Never => StatusResult::Pending,
            _ if real < ev.final_at => StatusResult::Pending,
            Truth::Complete => StatusResult::Complete {
                num_requested: ev.num_requested,
                num_completed: ev.num_completed,
            },
            Truth::Failed => StatusResult::Failed {
                num_requested: ev.num_requested,
                num_completed: ev.num_completed,
                failures: ev.failures.clone(),
            },
        }
    }

    // ---- views for assertions ----

    /// Every change persisted for `id`, in order, with the index of its step.
    pub fn changes(&self, id: &str) -> Vec<(usize, &Change)> {
        let mut out = Vec::new();
        for (i, s) in self.steps.iter().enumerate() {
            for a in &s.actions {
                if let Action::Persist(c) = a {
                    if c.event.event_id == id && !is_track_insert(c) {
                        out.push((i, &**c));
                    }
                }
            }
        }
        out
    }

    /// The latest persisted snapshot of `id` (or its initial record).
    pub fn last(&self, id: &str) -> EventRecord {
        self.changes(id)
            .last()
            .map(|(_, c)| c.event.clone())
            .or_else(|| self.initial.get(id).cloned())
            .unwrap_or_else(|| panic!("event {id} never seen"))
    }

    /// Wall times (ms since T0) of the Poll actions for `id`.
    pub fn poll_times(&self, id: &str) -> Vec<i64> {
        self.polls
            .iter()
            .filter(|p| p.event_id == id)
            .map(|p| rel(p.wall))
            .collect()
    }

    pub fn syncs_of(&self, kind: SyncKind) -> Vec<&SyncRun> {
        self.syncs.iter().filter(|s| s.kind == kind).collect()
    }

    pub fn resubmits(&self) -> Vec<(i64, String)> {
        self.steps
            .iter()
            .flat_map(|s| {
                s.actions.iter().filter_map(move |a| match a {
                    Action::Resubmit { event_id, .. } => Some((rel(s.wall), event_id.clone())),
                    _ => None,
                })
            })
            .collect()
    }

    /// The invariants of the core's module docs, checked over the whole log.
    pub fn check_invariants(&self) {
        let t = self.core.timings().clone();
        let poll_min = t.poll_min.as_millis() as i64;

        // (c) polls of one event are never closer than poll_min (on the clock the core sees).
        let mut last_poll: HashMap<&str, Timestamp> = HashMap::new();
        for p in &self.polls {
            if let Some(prev) = last_poll.insert(&p.event_id, p.wall) {
                assert!(
                    p.wall.0 - prev.0 >= poll_min,
                    "{}: polls at {prev:?} and {:?} closer than poll_min",
                    p.event_id,
                    p.wall
                );
            }
        }

        // Per-event walk over the persisted snapshots: (b), (d), (e).
        let mut prev: HashMap<String, EventRecord> = self.initial.clone();
        // Step index and real time at which each event's current outcome_at was recorded.
        let mut outcome_step: HashMap<String, (usize, i64)> = HashMap::new();
        let mut done: HashSet<String> = HashSet::new();
        let mut outstanding: HashMap<&str, usize> = HashMap::new();
        // At most one sync per (token, kind) runs at a time.
        let mut running: HashMap<(&str, SyncKind), u64> = HashMap::new();
        for (i, s) in self.steps.iter().enumerate() {
            match &s.input {
                Input::SyncDone(id, _) => running.retain(|_, r| r != id),
                Input::Crash => running.clear(),
                _ => {}
            }
            for a in &s.actions {
                if let Action::StartSync {
                    sync_id,
                    token,
                    kind,
                    ..
                } = a
                {
                    if let Some(other) = running.insert((token, *kind), *sync_id) {
                        panic!("step {i}: sync {sync_id} of {token}/{kind} while {other} runs");
                    }
                }
            }
            // (f) bounded actions per input.
            let notes = s.fed.max(1);
            let mut persists: HashMap<&str, usize> = HashMap::new();
            let mut polls: HashMap<&str, usize> = HashMap::new();
            let mut starts: HashMap<(&str, SyncKind), usize> = HashMap::new();
            match &s.input {
                Input::Status(id, _) | Input::Resubmitted(id, _) => {
                    if let Some(n) = outstanding.get_mut(id.as_str()) {
                        *n = n.saturating_sub(1);
                    }
                }
                Input::Crash => outstanding.clear(),
                _ => {}
            }
            for a in &s.actions {
                match a {
                    Action::Persist(c) => {
                        *persists.entry(&c.event.event_id).or_default() += 1;
                    }
                    Action::Poll { event_id, .. } | Action::Resubmit { event_id, .. } => {
                        *polls.entry(event_id).or_default() += 1;
                        let n = outstanding.entry(event_id).or_default();
                        assert_eq!(
                            *n, 0,
                            "step {i}: second request for {event_id} while one is in flight"
                        );
                        *n += 1;
                    }
                    Action::StartSync { token, kind, .. } => {
                        *starts.entry((token, *kind)).or_default() += 1;
                    }
                }
            }
            for (id, n) in &persists {
                assert!(
                    *n <= notes,
                    "step {i}: {n} persists for {id} from {:?}",
                    s.input
                );
            }
            for (id, n) in &polls {
                assert_eq!(*n, 1, "step {i}: {n} requests for {id}");
            }
            for (k, n) in &starts {
                assert_eq!(*n, 1, "step {i}: {n} starts of {k:?}");
            }
            // In-flight requests per token never exceed the cap (settled events release
            // their slot).
            let mut per_token: HashMap<String, usize> = HashMap::new();
            for (id, n) in &outstanding {
                if *n > 0 && !done.contains(*id) {
                    *per_token.entry(self.token_of(id)).or_default() += n;
                }
            }
            for (tok, n) in per_token {
                assert!(
                    n <= t.max_in_flight_per_token,
                    "step {i}: {n} requests in flight for token {tok}"
                );
            }

            for a in &s.actions {
                let Action::Persist(c) = a else { continue };
                let id = &c.event.event_id;
                let new = &c.event;
                // (b) settled is final.
                assert!(
                    !done.contains(id),
                    "step {i}: persist for {id} after it settled"
                );
                let Some(old) = prev.get(id).cloned() else {
                    panic!("step {i}: persist for untracked {id}");
                };
                let is_insert_snapshot = c.insert;
                let changed = new.state != old.state || new.outcome != old.outcome;
                if is_insert_snapshot {
                    assert_eq!(new.state, State::Pending);
                    assert!(!c.history.is_empty(), "{id}: insert without history");
                } else {
                    // (e) every state or outcome change has a history entry describing it.
                    assert_eq!(c.feed, changed, "step {i}: {id} feed flag");
                    if changed {
                        let first = c.history.first().unwrap_or_else(|| {
                            panic!("step {i}: {id} changed {old:?} -> {new:?} without history")
                        });
                        let last = c.history.last().expect("non-empty");
                        assert_eq!(first.from, Some(old.state), "step {i}: {id} history from");
                        assert_eq!(last.to, new.state, "step {i}: {id} history to");
                        assert_eq!(last.outcome, new.outcome, "step {i}: {id} history outcome");
                    }
                    // The entries chain from the old state to the new one.
                    let mut state = old.state;
                    for h in &c.history {
                        assert_eq!(h.at, s.wall, "step {i}: {id} history time");
                        assert_eq!(h.from, Some(state), "step {i}: {id} history chain");
                        assert!(!h.cause.is_empty(), "step {i}: {id} history without cause");
                        state = h.to;
                    }
                    assert_eq!(state, new.state, "step {i}: {id} history ends elsewhere");
                    // Monotone fields.
                    assert!(new.polls >= old.polls, "{id}: polls went down");
                    assert!(new.notified_success >= old.notified_success);
                    assert!(new.notified_failure >= old.notified_failure);
                    assert!(
                        old.outcome.is_none() || new.outcome.is_some(),
                        "{id}: outcome lost"
                    );
                    assert!(
                        !(old.state != State::Pending && new.state == State::Pending),
                        "step {i}: {id} went back to pending"
                    );
                    assert!(
                        old.superseded_by.is_none() || old.superseded_by == new.superseded_by,
                        "{id}: superseded_by rewritten"
                    );
                }
                if new.outcome_at != old.outcome_at || (is_insert_snapshot && new.outcome.is_some())
                {
                    assert_eq!(new.outcome_at, Some(s.wall), "step {i}: {id} outcome_at");
                    outcome_step.insert(id.clone(), (i, s.real));
                }
                if new.state == State::Syncing {
                    assert!(new.outcome.is_some(), "{id}: syncing without an outcome");
                }
                if new.state == State::Settled {
                    assert!(new.outcome.is_some(), "{id}: settled without an outcome");
                    assert_eq!(new.settled_at, Some(s.wall));
                    assert_eq!(new.next_check_at, None);
                    done.insert(id.clone());
                    // (d) how it settled.
                    match old.state {
                        State::Syncing => {
                            let Input::SyncDone(sid, true) = &s.input else {
                                panic!(
                                    "step {i}: {id} left syncing on {:?}, not a finished sync",
                                    s.input
                                );
                            };
                            let run = self
                                .syncs
                                .iter()
                                .find(|r| r.id == *sid)
                                .expect("known sync");
                            assert_eq!(run.token, new.token, "{id}: settled by another token");
                            assert_eq!(run.kind, new.event_type.settling_sync(), "{id}: kind");
                            if new.needs_full_sync {
                                assert!(run.full, "{id}: settled by an incremental sync");
                            }
                            let (ostep, oreal) =
                                outcome_step.get(id).copied().unwrap_or((0, i64::MIN));
                            assert!(
                                run.start_step >= ostep && run.start_real >= oreal,
                                "step {i}: {id} settled by sync {sid} started at step {} \
                                 before its outcome (step {ostep})",
                                run.start_step
                            );
                            if !self.clock_jumped {
                                assert!(
                                    new.outcome_at.is_some_and(|o| o <= run.start_wall),
                                    "{id}: sync started before the outcome"
                                );
                            }
                        }
                        State::Pending => {
                            assert_eq!(new.outcome, Some(Outcome::Complete), "{id}");
                            let n = new.num_requested.expect("count known when settling");
                            assert!(new.notified_success >= n, "{id}: settled uncovered");
                        }
                        State::Settled => unreachable!(),
                    }
                }
                prev.insert(id.clone(), new.clone());
            }
        }
    }
}
