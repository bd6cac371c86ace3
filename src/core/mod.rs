//! The pure core: the event lifecycle (docs/lifecycle.md), poll scheduling, sync coalescing
//! and the bookkeeping of what is durable. No IO, no clock reads, no async runtime: `now` is
//! always an argument.
//!
//! Driving rule (as in str0m/quinn): after every input (`track`, `notification`,
//! `status_result`, `resubmit_result`, `request_sync`, `sync_finished`, `persisted`,
//! `timeout`), drain [`Core::poll_action`] until it returns `None`, then sleep until
//! [`Core::poll_timeout`]. Every outbound action has a matching input ([`Action::Persist`] →
//! [`Core::persisted`], [`Action::Poll`] → [`Core::status_result`], [`Action::Resubmit`] →
//! [`Core::resubmit_result`], [`Action::StartSync`] → [`Core::sync_finished`]), so the core
//! always knows what is in flight and what is durable. A spurious or early `timeout` is a
//! no-op. Outputs are deterministic for a given input sequence and jitter seed: every map
//! that is iterated is ordered.
//!
//! Invariants kept here (and property-tested):
//! - `settled` is final; settled events leave memory after their last [`Change`].
//! - Two polls of one event are never closer than `poll_min`.
//! - An event in `syncing` settles only when a sync of its kind for its token that *started*
//!   after its outcome was recorded completes (and is full when the event needs it). "After"
//!   is causal (by sync id), not by wall clock, which may step back.
//! - History only grows: every state or outcome change emits a [`HistoryEntry`].
//! - A change whose commit failed is retried (merged with later ones, bounded); it never
//!   makes the changes of other events fail.

mod answers;
pub mod backoff;
pub mod model;
pub mod periodic;
mod persist;
mod record;
pub mod sync;
mod table;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use table::{SlotId, Table, Tracked};

use crate::time::Timestamp;
pub use model::{EventType, Failure, Outcome, State, SyncKind};
pub use record::{
    Action, Change, EventRecord, FailureSource, HistoryEntry, NotificationInput, Persisted,
    PollRecord, StatusResult, SyncOutcome, Timings, TrackDecision, TrackRequest,
};
pub use sync::{SyncState, MAX_UNWAITED_SYNC_ATTEMPTS};

pub use persist::MAX_PERSIST_ATTEMPTS;

#[derive(Default, Debug)]
struct TokenQueue {
    /// Events by when they are next due, by slot (see `table.rs`).
    due: BTreeSet<(Timestamp, SlotId)>,
    in_flight: usize,
}

/// The event core. See the module docs for the driving rule.
pub struct Core {
    timings: Timings,
    /// Looked up by id only, never iterated: a hash index is fine here.
    events: Table,
    queues: BTreeMap<String, TokenQueue>,
    syncs: sync::Syncs,
    actions: VecDeque<Action>,
    /// Events that settled while their resubmission was in flight: its answer is a live
    /// Apple event that must still be tracked.
    orphaned_resubmits: BTreeMap<String, EventRecord>,
    unpersisted: BTreeMap<String, persist::Unpersisted>,
    /// Failed commit attempts per event, cleared when one of its changes commits.
    persist_attempts: BTreeMap<String, u32>,
    persist_retry_at: Option<Timestamp>,
    /// Timer entries of recovered events not yet in `queues` (see [`Core::recover`]).
    recovering: Option<BTreeMap<String, Vec<(Timestamp, SlotId)>>>,
    /// Events given up on after [`MAX_PERSIST_ATTEMPTS`], for the executor to report.
    abandoned: Vec<String>,
}

impl Core {
    pub fn new(timings: Timings, next_sync_id: u64) -> Core {
        Core {
            syncs: sync::Syncs::new(
                next_sync_id,
                timings.sync_min_interval,
                timings.sync_max_staleness,
                timings.poll_min,
                timings.sync_retry_max,
                timings.jitter_seed,
            ),
            timings,
            events: Table::default(),
            queues: BTreeMap::new(),
            actions: VecDeque::new(),
            orphaned_resubmits: BTreeMap::new(),
            unpersisted: BTreeMap::new(),
            persist_attempts: BTreeMap::new(),
            persist_retry_at: None,
            recovering: None,
            abandoned: Vec::new(),
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
        self.events.len() == 0
    }

    /// A copy of an unsettled event's record.
    pub fn event(&self, event_id: &str) -> Option<EventRecord> {
        self.events.get(event_id).map(|t| t.rec)
    }

    /// Room for `more` recovered events without growing the table while loading.
    pub fn reserve(&mut self, more: usize) {
        self.events.reserve(more);
    }

    /// Reloads an unsettled event after a restart, with its unapplied notifications. Nothing
    /// was in flight across the restart; an event in `syncing` asks for its sync again.
    ///
    /// Between [`Core::begin_recovery`] and [`Core::end_recovery`] (or the next other input)
    /// the timer entries of recovered pending events are collected and added to the index
    /// in bulk: full B-tree nodes, and no allocation interleaved with the loading
    /// (docs/architecture.md, "Memory").
    pub fn recover(&mut self, now: Timestamp, rec: EventRecord, notes: Vec<NotificationInput>) {
        if rec.state == State::Settled || self.events.contains(&rec.event_id) {
            return;
        }
        // Syncing events have no timer entry, and notifications touch only their own
        // event: neither meets a collected entry.
        if self.recovering.is_none() || rec.state != State::Pending || !notes.is_empty() {
            self.recover_now(now, rec, notes);
            return;
        }
        let at = rec.next_check_at.unwrap_or(rec.submitted_at);
        let token = rec.token.clone();
        let id = rec.event_id.clone();
        let mut t = Tracked::new(rec, true);
        t.rec.next_check_at = Some(at);
        self.events.put(&t);
        if let (Some(slot), Some(bulk)) = (self.events.slot_of(&id), self.recovering.as_mut()) {
            bulk.entry(token).or_default().push((at, slot));
        }
    }

    /// Starts collecting recovered events' timer entries; see [`Core::recover`].
    pub fn begin_recovery(&mut self) {
        self.recovering.get_or_insert_with(BTreeMap::new);
    }

    /// Adds the collected timer entries to the index.
    pub fn end_recovery(&mut self) {
        for (token, entries) in self.recovering.take().unwrap_or_default() {
            // Collecting sorts once and packs the B-tree's nodes full.
            let mut bulk: BTreeSet<(Timestamp, SlotId)> = entries.into_iter().collect();
            self.queues.entry(token).or_default().due.append(&mut bulk);
        }
    }

    fn recover_now(&mut self, now: Timestamp, rec: EventRecord, notes: Vec<NotificationInput>) {
        let id = rec.event_id.clone();
        self.insert(rec, true);
        if let Some(t) = self.events.get(&id) {
            if t.rec.state == State::Syncing {
                self.enter_waiting(now, &t.rec, "recovered after restart");
            }
        }
        for n in notes {
            self.notification(now, n);
        }
    }

    /// The events of `token` whose insert is not committed yet and not on its way (still
    /// among the actions to take, or waiting to be retried): [`Core::forget_token`] drops
    /// those inserts, so whoever waits for them must be told they were not committed.
    pub fn uncommitted_inserts(&self, token: &str) -> Vec<String> {
        let queued = self.actions.iter().filter_map(|a| match a {
            Action::Persist(c) if c.insert && c.event.token == token => Some(&c.event.event_id),
            _ => None,
        });
        let retried = self
            .unpersisted
            .values()
            .filter(|u| u.change.insert && u.change.event.token == token)
            .map(|u| &u.change.event.event_id);
        let mut ids: Vec<String> = queued.chain(retried).cloned().collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// Gives up working `token` (another instance holds its lease now): its events, timers,
    /// sync runs and uncommitted changes leave memory; the store keeps what was committed for
    /// the next holder. Answers of effects still in flight for it are then ignored. Returns
    /// how many events left.
    pub fn forget_token(&mut self, token: &str) -> usize {
        self.end_recovery();
        let ids = self.events.ids_of_token(token);
        for id in &ids {
            self.events.remove(id);
            self.persist_attempts.remove(id);
        }
        self.queues.remove(token);
        self.syncs.forget_token(token);
        self.unpersisted
            .retain(|_, u| u.change.event.token != token);
        self.orphaned_resubmits.retain(|_, r| r.token != token);
        self.actions.retain(|a| match a {
            Action::Persist(c) => c.event.token != token,
            Action::Poll { token: t, .. }
            | Action::Resubmit { token: t, .. }
            | Action::StartSync { token: t, .. } => t != token,
        });
        ids.len()
    }

    /// A newly tracked event. Emits the [`Action::Persist`] that inserts it (with the
    /// request body, if any); notifications that arrived before it are fed once that commits
    /// (the store keeps them). Idempotent for the same token and type.
    pub fn track(
        &mut self,
        now: Timestamp,
        rec: EventRecord,
        request_body: Option<String>,
    ) -> TrackDecision {
        self.end_recovery();
        if let Some(t) = self.events.get(&rec.event_id) {
            return if t.rec.token == rec.token && t.rec.event_type == rec.event_type {
                TrackDecision::Existing {
                    record: t.rec.clone(),
                    durable: t.durable,
                }
            } else {
                TrackDecision::Conflict {
                    token: t.rec.token.clone(),
                    event_type: t.rec.event_type,
                }
            };
        }
        self.emit_persist(Core::insert_change(now, &rec, request_body));
        self.insert(rec.clone(), false);
        TrackDecision::Created(rec)
    }

    /// The change that inserts a newly tracked event (with its request body, if any): what
    /// [`Core::track`] persists, and what an instance that does not work the event's token
    /// stores for the holder.
    pub fn insert_change(
        now: Timestamp,
        rec: &EventRecord,
        request_body: Option<String>,
    ) -> Change {
        let mut change = Change::of(rec);
        change.insert = true;
        change.feed = true;
        change.request_body = request_body;
        change.history.push(HistoryEntry {
            at: now,
            from: None,
            to: rec.state,
            outcome: rec.outcome,
            cause: "tracked".into(),
        });
        change
    }

    fn insert(&mut self, mut rec: EventRecord, durable: bool) {
        if rec.state == State::Pending && rec.next_check_at.is_none() {
            rec.next_check_at = Some(rec.submitted_at);
        }
        if rec.state != State::Pending {
            rec.next_check_at = None;
        }
        let at = rec.next_check_at;
        let token = rec.token.clone();
        let id = rec.event_id.clone();
        self.events.put(&Tracked::new(rec, durable));
        if let (Some(at), Some(slot)) = (at, self.events.slot_of(&id)) {
            self.queues.entry(token).or_default().due.insert((at, slot));
        }
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
        self.end_recovery();
        self.queue_sync(now, token, kind, full, cause);
    }

    fn queue_sync(&mut self, now: Timestamp, token: &str, kind: SyncKind, full: bool, cause: &str) {
        let mut out = Vec::new();
        let busy = self.busy(now, token);
        self.syncs
            .request(now, &(token.to_string(), kind), full, cause, busy, &mut out);
        self.actions.extend(out);
    }

    /// A sync run ended. When it succeeded, every event waiting for a sync of this kind
    /// whose outcome predates the run's start settles.
    pub fn sync_finished(&mut self, now: Timestamp, sync_id: u64, outcome: SyncOutcome) {
        self.end_recovery();
        let mut out = Vec::new();
        let busy = self
            .syncs
            .token_of(sync_id)
            .is_some_and(|t| self.busy(now, &t));
        let done = self.syncs.finished(now, sync_id, &outcome, busy, &mut out);
        if let Some((key, run, waiting)) = done {
            let events = &self.events;
            let covered: Vec<Tracked> = waiting
                .into_iter()
                .filter_map(|id| events.get(&id))
                .filter(|t| {
                    t.rec.outcome_at.is_some()
                        && t.outcome_seq <= run.id
                        && (run.full || !t.rec.needs_full_sync)
                })
                .collect();
            for t in &covered {
                self.syncs.unwait(&key, &t.rec.event_id);
            }
            for t in covered {
                let change = Change::of(&t.rec);
                self.after_change(
                    now,
                    t.rec,
                    change,
                    Next::Settle,
                    format!("{} sync {sync_id} finished", key.1),
                );
            }
        }
        self.actions.extend(out);
    }

    /// Time passes: fire due polls, give-ups and sync retries.
    pub fn timeout(&mut self, now: Timestamp) {
        self.end_recovery();
        let tokens: Vec<String> = self.queues.keys().cloned().collect();
        for token in tokens {
            while let Some(q) = self.queues.get_mut(&token) {
                if q.in_flight >= self.timings.max_in_flight_per_token {
                    break;
                }
                let Some((at, slot)) = q.due.first().copied() else {
                    break;
                };
                if at > now {
                    break;
                }
                q.due.pop_first();
                if let Some(id) = self.events.id_of(slot) {
                    self.fire(now, &id);
                }
            }
        }
        let mut out = Vec::new();
        let queues = &self.queues;
        let limit = self.timings.max_in_flight_per_token;
        self.syncs
            .timeout(now, |t| queue_busy(queues.get(t), now, limit), &mut out);
        self.actions.extend(out);
        self.retry_persists(now);
    }

    /// Whether `token`'s polls are using its rate limit: half its in-flight bound taken, or
    /// polls overdue.
    fn busy(&self, now: Timestamp, token: &str) -> bool {
        queue_busy(
            self.queues.get(token),
            now,
            self.timings.max_in_flight_per_token,
        )
    }

    fn fire(&mut self, now: Timestamp, id: &str) {
        let Some(mut t) = self.events.get(id) else {
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
            let change = Change::of(&t.rec);
            t.rec.outcome = Some(Outcome::TimedOut);
            t.rec.outcome_at = Some(now);
            self.events.put(&t);
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
                self.events.put(&t);
                if let Some(slot) = self.events.slot_of(id) {
                    self.queues
                        .entry(t.rec.token)
                        .or_default()
                        .due
                        .insert((at, slot));
                }
                return;
            }
        }
        let mut change = Change::of(&t.rec);
        t.in_flight = true;
        t.rec.polls = t.rec.polls.saturating_add(1);
        t.rec.last_poll_at = Some(now);
        t.rec.next_check_at = None;
        self.events.put(&t);
        let token = t.rec.token.clone();
        change.event = t.rec;
        self.queues.entry(token.clone()).or_default().in_flight += 1;
        self.emit_persist(change);
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
        let next_sync_id = self.syncs.next_id();
        let (Some(mut t), Some(slot)) = (self.events.get(&id), self.events.slot_of(&id)) else {
            return;
        };
        if t.rec.outcome_at != before.outcome_at {
            t.outcome_seq = next_sync_id;
        }
        // Take the event out of the timer index; it is put back below if it still polls.
        if let Some(q) = self.queues.get_mut(&t.rec.token) {
            for at in [t.rec.next_check_at, before.next_check_at]
                .into_iter()
                .flatten()
            {
                q.due.remove(&(at, slot));
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
        if rec.state != State::Settled {
            self.events.put(&t);
        }
        if resubmit {
            self.queues.entry(rec.token.clone()).or_default().in_flight += 1;
        }
        // While a resubmission is in flight its answer puts the event back on the timer.
        if let (Some(at), false, State::Pending) = (rec.next_check_at, resubmit, rec.state) {
            self.queues
                .entry(rec.token.clone())
                .or_default()
                .due
                .insert((at, slot));
        }
        self.emit_persist(change);
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
                if self.events.remove(&id).is_some() {
                    if t.resubmitting {
                        self.orphaned_resubmits.insert(id.clone(), t.rec);
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
        let key = (rec.token.clone(), rec.event_type.settling_sync());
        self.syncs.wait(&key, &rec.event_id);
        let why = format!("event {} ({cause})", rec.event_id);
        for kind in rec.event_type.sync_kinds() {
            let full = rec.needs_full_sync && *kind == SyncKind::Assignments;
            self.queue_sync(now, &rec.token, *kind, full, &why);
        }
    }

    fn remove_waiting(&mut self, rec: &EventRecord) {
        let key = (rec.token.clone(), rec.event_type.settling_sync());
        self.syncs.unwait(&key, &rec.event_id);
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
        [polls, self.syncs.next_timeout(), self.persist_retry_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// Events due at or before `now`, without firing them (for inspection and benchmarks).
    pub fn due_count(&self, now: Timestamp) -> usize {
        self.queues
            .values()
            .map(|q| q.due.range(..=(now, SlotId::MAX)).count())
            .sum()
    }

    /// Sync state of one (token, kind): running run, queued run and when it may start.
    pub fn sync_state(&self, token: &str, kind: SyncKind) -> Option<SyncState> {
        self.syncs.state(&(token.to_string(), kind))
    }
}

fn queue_busy(q: Option<&TokenQueue>, now: Timestamp, limit: usize) -> bool {
    q.is_some_and(|q| {
        q.in_flight >= limit.div_ceil(2) || q.due.first().is_some_and(|(at, _)| *at <= now)
    })
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

#[cfg(test)]
mod tests;
