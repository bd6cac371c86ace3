//! The one loop that drives the core (docs/architecture.md): each turn reads the clock once,
//! feeds that turn's inputs to the [`Core`], hands the turn's changes to the store as one job,
//! and only after the store answers dispatches the effects whose changes committed
//! (write-ahead: a decision is durable before it acts, so a crash never repeats a
//! resubmission the store does not know about). The store's answers come back in turn order
//! and are fed to the core ([`Core::persisted`]), so the core knows what is durable.
//!
//! Everything reaches the loop through one bounded channel: tracking requests, committed
//! notifications, sync requests, and the answers of effects. Producers wait when it is full.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

mod interface;
mod leases;

use leases::Tokens;

pub use interface::{prune, Effects, Input, NoApple, ResubmitError, SyncTicket, TrackReply};

use crate::cluster::held::Leases;
use crate::core::periodic::Periodic;
use crate::core::{
    Action, Change, Core, EventRecord, Persisted, StatusResult, SyncOutcome, TrackDecision,
};
use crate::store::{Store, StoreError, SyncStart, TurnCommit, TurnWrite};
use crate::time::Timestamp;

/// Handles for talking to a running executor.
#[derive(Clone)]
pub struct ExecutorHandle {
    pub inputs: mpsc::Sender<Input>,
    /// Unix ms of the loop's last turn, for `/healthz`.
    pub heartbeat: Arc<AtomicI64>,
}

impl ExecutorHandle {
    /// Whether the loop turned within `within` of `now`.
    pub fn alive(&self, now: Timestamp, within: Duration) -> bool {
        let last = Timestamp(self.heartbeat.load(Ordering::Relaxed));
        now.since(last) <= within
    }

    /// Tracks an event and waits until it is durable (or known not to be).
    pub async fn track(&self, record: EventRecord, request: Option<String>) -> TrackReply {
        let (reply, rx) = oneshot::channel();
        let sent = self
            .inputs
            .send(Input::Track {
                record,
                request,
                reply,
            })
            .await;
        if sent.is_err() {
            return TrackReply::NotCommitted("the daemon is shutting down".into());
        }
        rx.await
            .unwrap_or_else(|_| TrackReply::NotCommitted("the daemon is shutting down".into()))
    }
}

/// Most inputs taken in one turn: bounds the turn's latency and transaction size.
const MAX_INPUTS_PER_TURN: usize = 512;
/// The loop wakes at least this often (heartbeat, health).
const IDLE_WAKE: Duration = Duration::from_secs(5);
/// Capacity of the input channel.
const INPUT_QUEUE: usize = 8192;
/// Turns handed to the store and not answered yet; the loop takes no new input beyond this.
const MAX_TURNS_IN_FLIGHT: usize = 64;

/// A turn handed to the store, with what waits on it.
struct TurnInFlight {
    effects: Vec<Action>,
}

type Commit = BoxFuture<'static, Result<TurnCommit, StoreError>>;

pub struct Executor {
    core: Core,
    store: Store,
    effects: Arc<dyn Effects>,
    inputs_rx: mpsc::Receiver<Input>,
    inputs_tx: mpsc::Sender<Input>,
    heartbeat: Arc<AtomicI64>,
    tasks: tokio::task::JoinSet<()>,
    commits: FuturesOrdered<Commit>,
    turns: std::collections::VecDeque<TurnInFlight>,
    /// Trackers waiting for their event's insert to commit.
    waiting_trackers: BTreeMap<String, Vec<(oneshot::Sender<TrackReply>, bool)>>,
    periodic: Periodic,
    tokens: Tokens,
}

impl Executor {
    pub fn new(
        core: Core,
        store: Store,
        effects: Arc<dyn Effects>,
        periodic: Periodic,
    ) -> (Executor, ExecutorHandle) {
        let (inputs_tx, inputs_rx) = mpsc::channel(INPUT_QUEUE);
        let heartbeat = Arc::new(AtomicI64::new(Timestamp::now().0));
        let handle = ExecutorHandle {
            inputs: inputs_tx.clone(),
            heartbeat: heartbeat.clone(),
        };
        (
            Executor {
                core,
                store,
                effects,
                inputs_rx,
                inputs_tx,
                heartbeat,
                tasks: tokio::task::JoinSet::new(),
                commits: FuturesOrdered::new(),
                turns: std::collections::VecDeque::new(),
                waiting_trackers: BTreeMap::new(),
                periodic,
                tokens: Tokens::new(Leases::All),
            },
            handle,
        )
    }

    /// Works only the tokens whose leases `leases` holds (several instances); the default
    /// is every token.
    pub fn with_leases(mut self, leases: Leases) -> Executor {
        self.tokens = Tokens::new(leases);
        self
    }

    /// Runs until `shutdown` is cancelled, then commits what is decided and waits up to
    /// `drain` for in-flight effects before abandoning them (their events are re-polled after
    /// restart).
    pub async fn run(mut self, shutdown: CancellationToken, drain: Duration) {
        // Anything recovered and already due fires on the first turn.
        let now = Timestamp::now();
        self.core.timeout(now);
        self.flush(now).await;
        loop {
            let now = Timestamp::now();
            self.heartbeat.store(now.0, Ordering::Relaxed);
            let next = [self.core.poll_timeout(), self.periodic.next_at()]
                .into_iter()
                .flatten()
                .min();
            let wait = [next.map(|t| t.since(now)), self.tokens.next_wake()]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(IDLE_WAKE)
                .min(IDLE_WAKE);
            let room = self.turns.len() < MAX_TURNS_IN_FLIGHT;
            let mut first: Option<Input> = None;
            let mut commit = None;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(c) = self.commits.next(), if !self.commits.is_empty() => commit = Some(c),
                Some(input) = self.inputs_rx.recv(), if room => first = Some(input),
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
                _ = self.tokens.changed() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            // The one clock read of this turn.
            let now = Timestamp::now();
            if let Some(c) = commit {
                self.committed(now, c);
            }
            if let Some(input) = first {
                self.handle(now, input);
                // Take whatever else is ready, so a burst costs one transaction.
                for _ in 0..MAX_INPUTS_PER_TURN {
                    match self.inputs_rx.try_recv() {
                        Ok(i) => self.handle(now, i),
                        Err(_) => break,
                    }
                }
            }
            self.follow_leases(now);
            self.core.timeout(now);
            for chore in self.periodic.due(now) {
                let fx = self.effects.clone();
                let results = self.inputs_tx.clone();
                self.tasks.spawn(async move {
                    fx.chore(chore, now).await;
                    let _ = results.send(Input::ChoreDone(chore)).await;
                });
            }
            self.flush(now).await;
        }
        let now = Timestamp::now();
        self.flush(now).await;
        let deadline = tokio::time::Instant::now() + drain;
        loop {
            tokio::select! {
                Some(c) = self.commits.next(), if !self.commits.is_empty() => {
                    self.committed(Timestamp::now(), c)
                }
                r = tokio::time::timeout_at(deadline, self.tasks.join_next()), if !self.tasks.is_empty() => {
                    if r.is_err() {
                        tracing::warn!(in_flight = self.tasks.len(), "abandoning in-flight Apple calls at shutdown");
                        self.tasks.abort_all();
                    }
                }
                else => break,
            }
            // Answers that arrived while draining are applied too; no new effects start.
            while let Ok(i) = self.inputs_rx.try_recv() {
                if !matches!(i, Input::Track { .. }) {
                    self.handle(Timestamp::now(), i);
                }
            }
            self.persist_only(Timestamp::now()).await;
        }
        self.persist_only(Timestamp::now()).await;
        while let Some(c) = self.commits.next().await {
            if let Err(e) = &c {
                tracing::error!(error = %e, "final commit failed");
            }
        }
    }

    fn handle(&mut self, now: Timestamp, input: Input) {
        match input {
            Input::Track {
                record,
                request,
                reply,
            } if !self.tokens.works(&record.token) && !self.tokens.is_loading(&record.token) => {
                self.track_elsewhere(now, record, request, reply)
            }
            Input::Track {
                record,
                request,
                reply,
            } => {
                let id = record.event_id.clone();
                match self.core.track(now, record, request) {
                    TrackDecision::Created(_) => self
                        .waiting_trackers
                        .entry(id)
                        .or_default()
                        .push((reply, true)),
                    TrackDecision::Existing {
                        record,
                        durable: true,
                    } => {
                        let _ = reply.send(TrackReply::Existing(record));
                    }
                    TrackDecision::Existing { .. } => self
                        .waiting_trackers
                        .entry(id)
                        .or_default()
                        .push((reply, false)),
                    TrackDecision::Conflict { token, event_type } => {
                        let _ = reply.send(TrackReply::Conflict { token, event_type });
                    }
                }
            }
            Input::Notification(n) if !self.tokens.works(&n.token) => {
                // Committed, and handed off if another instance holds the token; a token
                // still loading gets it once loaded.
                let token = n.token.clone();
                self.tokens.wait_for_load(&token, Input::Notification(n));
            }
            Input::Notification(n) => {
                let id = n.event_id.clone();
                if !self.core.notification(now, n) {
                    tracing::debug!(event_id = %id, "notification for an event not tracked (yet); kept");
                }
            }
            Input::Sync {
                token,
                kind,
                full,
                cause,
                reply,
            } if !self.tokens.works(&token) => {
                if self.tokens.is_loading(&token) {
                    let input = Input::Sync {
                        token: token.clone(),
                        kind,
                        full,
                        cause,
                        reply,
                    };
                    self.tokens.wait_for_load(&token, input);
                } else if let Some(reply) = reply {
                    // Asked through this instance's API: the holder runs it. (Schedules and
                    // starts are each holder's own; notifications hand theirs off when
                    // committed.)
                    self.hand_off_sync(now, token, kind, full, cause, reply);
                }
            }
            Input::Sync {
                token,
                kind,
                full,
                cause,
                reply,
            } => {
                self.core.request_sync(now, &token, kind, full, &cause);
                if let Some(reply) = reply {
                    let st = self.core.sync_state(&token, kind);
                    let running = st.and_then(|s| s.running);
                    let queued = st.is_some_and(|s| s.queued);
                    let _ = reply.send(SyncTicket {
                        sync_id: running,
                        queued,
                        queued_behind: running.filter(|_| queued),
                        starts_at: st.and_then(|s| s.queued_not_before).map(|t| t.to_rfc3339()),
                    });
                }
            }
            Input::Status { event_id, result } => self.core.status_result(now, &event_id, result),
            Input::Resubmitted { event_id, result } => {
                self.core
                    .resubmit_result(now, &event_id, result.map_err(|e| e.to_string()))
            }
            Input::SyncFinished { sync_id, outcome } => {
                self.core.sync_finished(now, sync_id, outcome)
            }
            Input::ChoreDone(chore) => self.periodic.done(chore, now),
            Input::Loaded { token, result } => self.token_loaded(now, token, result),
            Input::Handoffs(result) => self.handoffs_taken(now, result),
        }
    }

    /// The store answered the oldest turn in flight: tell the core what is durable, answer
    /// trackers, then dispatch the effects whose changes committed.
    fn committed(&mut self, now: Timestamp, result: Result<TurnCommit, StoreError>) {
        let Some(turn) = self.turns.pop_front() else {
            return;
        };
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                // The whole job is lost (the writer stopped, or SQLite's turn failed in its
                // own work; a commit that failed hands the turn back undone instead): nothing
                // of it is durable. Its changes are gone with the job, so the events affected
                // are re-polled from their last durable state after a restart.
                tracing::error!(error = %e, "a turn could not be committed");
                for a in turn.effects {
                    self.refuse(now, a);
                }
                return;
            }
        };
        let mut committed_events = std::collections::BTreeSet::new();
        for (change, error) in result.changes.into_iter().zip(result.errors) {
            let id = change.event.event_id.clone();
            let insert = change.insert;
            if let Some(e) = &error {
                tracing::error!(event_id = %id, error = %e, "a change could not be committed; retrying");
            } else {
                committed_events.insert(id.clone());
            }
            if insert {
                if let Some(waiters) = self.waiting_trackers.remove(&id) {
                    for (reply, created) in waiters {
                        let answer = match (&error, created) {
                            (None, true) => TrackReply::Created(change.event.clone()),
                            (None, false) => TrackReply::Existing(change.event.clone()),
                            (Some(e), _) => TrackReply::NotCommitted(e.clone()),
                        };
                        let _ = reply.send(answer);
                    }
                }
            }
            // A token let go of: its next holder works from what the store has.
            if self.tokens.works(&change.event.token) {
                self.core.persisted(now, Persisted { change, error });
            }
        }
        for id in self.core.take_abandoned() {
            tracing::error!(event_id = %id, "gave up committing this event's changes");
            if let Some(waiters) = self.waiting_trackers.remove(&id) {
                for (reply, _) in waiters {
                    let _ = reply.send(TrackReply::NotCommitted("the store refuses it".into()));
                }
            }
        }
        for n in result.early {
            self.core.notification(now, n);
        }
        let mut syncs = result.syncs_written.into_iter();
        for action in turn.effects {
            let go = match &action {
                Action::Poll { event_id, .. } | Action::Resubmit { event_id, .. } => {
                    committed_events.contains(event_id)
                }
                Action::StartSync { .. } => syncs.next().unwrap_or(false),
                Action::Persist(_) => false,
            } && action_token(&action).is_none_or(|t| self.tokens.works(t));
            if go {
                self.dispatch(action);
            } else {
                self.refuse(now, action);
            }
        }
    }

    /// Answers an effect that must not run because its decision is not durable.
    fn refuse(&mut self, now: Timestamp, action: Action) {
        match action {
            Action::Poll { event_id, .. } => self.core.status_result(
                now,
                &event_id,
                StatusResult::Retry {
                    not_before: None,
                    reason: "state could not be committed".into(),
                },
            ),
            Action::Resubmit { event_id, .. } => self.core.resubmit_result(
                now,
                &event_id,
                Err(ResubmitError::NotCommitted.to_string()),
            ),
            Action::StartSync { sync_id, .. } => self.core.sync_finished(
                now,
                sync_id,
                SyncOutcome::Transient("its run could not be recorded".into()),
            ),
            Action::Persist(_) => {}
        }
    }

    fn dispatch(&mut self, action: Action) {
        let fx = self.effects.clone();
        let results = self.inputs_tx.clone();
        let store = self.store.clone();
        let token = action_token(&action).map(str::to_string);
        let task = self.tasks.spawn(async move {
            let input = match action {
                Action::Poll { token, event_id } => {
                    let result = fx.poll_status(token, event_id.clone()).await;
                    Input::Status { event_id, result }
                }
                Action::Resubmit {
                    token,
                    event_id,
                    event_type,
                } => {
                    let id = event_id.clone();
                    let result = match store.request_body(&id).await {
                        Ok(Some(body)) => fx.resubmit(token, event_type, body).await,
                        Ok(None) => Err(ResubmitError::NoBody),
                        Err(e) => Err(ResubmitError::Store(e.to_string())),
                    };
                    Input::Resubmitted { event_id, result }
                }
                Action::StartSync {
                    sync_id,
                    token,
                    kind,
                    full,
                    ..
                } => {
                    let outcome = fx.sync(sync_id, token, kind, full).await;
                    Input::SyncFinished { sync_id, outcome }
                }
                Action::Persist(_) => return,
            };
            let _ = results.send(input).await;
        });
        if let Some(token) = token {
            self.tokens.note_task(token, task);
        }
    }

    /// Drains the core's actions and hands the turn to the store; its effects wait for the
    /// answer (see [`Executor::committed`]).
    async fn flush(&mut self, now: Timestamp) {
        let (changes, effects) = self.drain_actions();
        self.queue_turn(now, changes, effects).await;
    }

    /// At shutdown: persist what was decided, start nothing new.
    async fn persist_only(&mut self, now: Timestamp) {
        let (changes, effects) = self.drain_actions();
        // Effects not started are answered as refused so their events stay consistent.
        let starts: Vec<Action> = effects
            .into_iter()
            .filter(|a| matches!(a, Action::StartSync { .. }))
            .collect();
        for a in starts {
            self.refuse(now, a);
        }
        let (more, _) = self.drain_actions();
        let mut all = changes;
        all.extend(more);
        self.queue_turn(now, all, Vec::new()).await;
    }

    fn drain_actions(&mut self) -> (Vec<Change>, Vec<Action>) {
        let mut changes: Vec<Change> = Vec::new();
        let mut effects: Vec<Action> = Vec::new();
        while let Some(a) = self.core.poll_action() {
            match a {
                Action::Persist(c) => changes.push(*c),
                other => effects.push(other),
            }
        }
        (changes, effects)
    }

    async fn queue_turn(&mut self, now: Timestamp, changes: Vec<Change>, effects: Vec<Action>) {
        if changes.is_empty() && effects.is_empty() {
            return;
        }
        let syncs: Vec<SyncStart> = effects
            .iter()
            .filter_map(|a| match a {
                Action::StartSync {
                    sync_id,
                    token,
                    kind,
                    full,
                    cause,
                } => Some(SyncStart {
                    id: *sync_id,
                    token: token.clone(),
                    kind: *kind,
                    full: *full,
                    cause: cause.clone(),
                }),
                _ => None,
            })
            .collect();
        let (tx, rx) = oneshot::channel();
        let queued = self
            .store
            .commit_turn(TurnWrite { changes, syncs }, now, tx)
            .await;
        if let Err(e) = queued {
            tracing::error!(error = %e, "cannot queue the turn's changes");
        }
        self.commits.push_back(Box::pin(async move {
            rx.await.unwrap_or(Err(StoreError::Closed))
        }));
        self.turns.push_back(TurnInFlight { effects });
    }
}

/// The token an effect calls Apple for.
fn action_token(action: &Action) -> Option<&str> {
    match action {
        Action::Poll { token, .. }
        | Action::Resubmit { token, .. }
        | Action::StartSync { token, .. } => Some(token),
        Action::Persist(_) => None,
    }
}
