//! The executor's side of several instances (docs/architecture.md, "Several instances"):
//! which tokens it works, loading a token when its lease is acquired and letting it go when
//! lost, taking the handoffs of its tokens, and storing for the holder what arrives for a
//! token held elsewhere.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::oneshot;

use super::{Executor, Input, SyncTicket, TrackReply};
use crate::cluster::held::Leases;
use crate::cluster::keeper::local_now;
use crate::core::{Core, EventRecord, SyncKind};
use crate::store::{Handoff, Loaded, StoreError, Taken, TrackedElsewhere};
use crate::time::Timestamp;

/// How often the tokens' handoffs are taken (several instances): the delay before an event
/// tracked, or a notification received, on another instance is acted on.
const TAKE_EVERY: Duration = Duration::from_millis(500);
/// Inputs kept for a token while it loads, at most (the store has them anyway).
const MAX_BUFFERED: usize = 10_000;
/// After a failed load, the token is loaded again this much later.
const LOAD_RETRY: Duration = Duration::from_secs(5);

/// Which tokens this executor works (docs/architecture.md, "Several instances"). With one
/// instance, all; with several, those whose lease the keeper holds: loaded from the store
/// when acquired, let go of when lost.
pub(super) struct Tokens {
    leases: Leases,
    loaded: std::collections::BTreeSet<String>,
    /// Acquired, state being read; inputs for it wait here.
    loading: BTreeMap<String, Vec<Input>>,
    load_retry: BTreeMap<String, Timestamp>,
    /// The effects in flight per token, cut when its lease is lost.
    in_flight: BTreeMap<String, Vec<tokio::task::AbortHandle>>,
    taking: bool,
    next_take: Option<tokio::time::Instant>,
    /// The keeper published a new set since the last review.
    changed: bool,
    /// The first held token's deadline as of the last review (keeper's clock): the set
    /// needs no review before it, unless it changes (so a turn costs nothing per token).
    deadline: Option<Timestamp>,
}

impl Tokens {
    pub(super) fn new(leases: Leases) -> Tokens {
        Tokens {
            leases,
            loaded: Default::default(),
            loading: BTreeMap::new(),
            load_retry: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            taking: false,
            next_take: None,
            changed: true,
            deadline: None,
        }
    }

    /// Keeps `input` until `token` is loaded (bounded: the store has it anyway); drops it
    /// when the token is not loading.
    pub(super) fn wait_for_load(&mut self, token: &str, input: Input) {
        if let Some(waiting) = self.loading.get_mut(token) {
            if waiting.len() < MAX_BUFFERED {
                waiting.push(input);
            }
        }
    }

    /// How long until the leases need a look: the first held token's deadline, or the next
    /// take of handoffs.
    pub(super) fn next_wake(&self) -> Option<Duration> {
        let take = self
            .next_take
            .map(|t| t.saturating_duration_since(tokio::time::Instant::now()));
        let deadline = self.deadline.map(|d| d.since(local_now()));
        [deadline, take].into_iter().flatten().min()
    }

    /// Resolves when the keeper publishes a new set of held tokens.
    pub(super) async fn changed(&mut self) {
        self.leases.changed().await;
        self.changed = true;
    }

    /// Whether the held set must be compared with the tokens worked: it changed, a
    /// deadline passed, or a failed load is due again.
    fn needs_review(&self, now: Timestamp) -> bool {
        self.changed
            || self.deadline.is_some_and(|d| local_now() >= d)
            || self.load_retry.values().any(|at| now >= *at)
    }

    pub(super) fn is_loading(&self, token: &str) -> bool {
        self.loading.contains_key(token)
    }

    /// Remembers an effect in flight for `token`, to cut it if the lease is lost.
    pub(super) fn note_task(&mut self, token: String, task: tokio::task::AbortHandle) {
        if matches!(self.leases, Leases::Kept(_)) {
            let tasks = self.in_flight.entry(token).or_default();
            tasks.retain(|t| !t.is_finished());
            tasks.push(task);
        }
    }

    /// Whether this executor works `token` now (its events are in the core).
    pub(super) fn works(&self, token: &str) -> bool {
        match self.leases {
            Leases::All => true,
            Leases::Kept(_) => self.loaded.contains(token),
        }
    }
}

impl Executor {
    /// Loads the tokens newly acquired and lets go of those lost (several instances); takes
    /// the handoffs of the tokens worked every [`TAKE_EVERY`].
    pub(super) fn follow_leases(&mut self, now: Timestamp) {
        if matches!(self.tokens.leases, Leases::All) {
            return;
        }
        self.maybe_take();
        if !self.tokens.needs_review(now) {
            return;
        }
        let Some(held) = self.tokens.leases.held() else {
            return;
        };
        self.tokens.changed = false;
        self.tokens.deadline = self.tokens.leases.first_deadline();
        // Retries due now are made below (the token is not busy then); those of tokens no
        // longer held go.
        self.tokens
            .load_retry
            .retain(|t, at| held.contains(t) && now < *at);
        let lost: Vec<String> = self
            .tokens
            .loaded
            .iter()
            .chain(self.tokens.loading.keys())
            .filter(|t| !held.contains(*t))
            .cloned()
            .collect();
        for token in lost {
            self.let_go(&token);
        }
        for token in held {
            let busy = self.tokens.loaded.contains(&token)
                || self.tokens.loading.contains_key(&token)
                || self
                    .tokens
                    .load_retry
                    .get(&token)
                    .is_some_and(|at| now < *at);
            if !busy {
                self.start_loading(now, token);
            }
        }
    }

    /// The lease of `token` is lost (or its deadline passed): stop working it at once.
    fn let_go(&mut self, token: &str) {
        // Events tracked a moment ago whose insert has not gone to the store yet: the core
        // drops it with the token, so their trackers hear it was not committed (they try
        // again, and the insert then goes to the new holder) instead of waiting forever.
        for id in self.core.uncommitted_inserts(token) {
            for (reply, _) in self.waiting_trackers.remove(&id).unwrap_or_default() {
                let _ = reply.send(TrackReply::NotCommitted(format!(
                    "this instance lost the lease of token {token} before committing it"
                )));
            }
        }
        let events = self.core.forget_token(token);
        self.tokens.loaded.remove(token);
        self.tokens.loading.remove(token);
        let mut cut = 0;
        for task in self.tokens.in_flight.remove(token).unwrap_or_default() {
            if !task.is_finished() {
                task.abort();
                cut += 1;
            }
        }
        tracing::info!(token, events, cut_calls = cut, "lease lost: token let go");
    }

    fn start_loading(&mut self, now: Timestamp, token: String) {
        tracing::info!(token = %token, "lease acquired: loading the token");
        self.tokens.loading.insert(token.clone(), Vec::new());
        self.tokens.load_retry.remove(&token);
        let store = self.store.clone();
        let results = self.inputs_tx.clone();
        let task = self.tasks.spawn(async move {
            let result = store.load_token(&token, now).await;
            let _ = results.send(Input::Loaded { token, result }).await;
        });
        let _ = task;
    }

    pub(super) fn token_loaded(
        &mut self,
        now: Timestamp,
        token: String,
        result: Result<Loaded, StoreError>,
    ) {
        let Some(waiting) = self.tokens.loading.remove(&token) else {
            return; // let go of meanwhile
        };
        let loaded = match result {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(token = %token, error = %e, "cannot load the token; trying again");
                self.tokens
                    .load_retry
                    .insert(token, now.saturating_add(LOAD_RETRY));
                return;
            }
        };
        if let Some(until) = loaded.paused_until.filter(|u| *u > now) {
            tracing::info!(token = %token, until = %until.to_rfc3339(), "honouring the previous holder's Retry-After");
            self.effects.pause_until(&token, until);
        }
        let events = loaded.events.len();
        self.core.reserve(events);
        self.core.begin_recovery();
        for (rec, notes) in loaded.events {
            self.core.recover(now, rec, notes);
        }
        self.core.end_recovery();
        self.tokens.loaded.insert(token.clone());
        tracing::info!(token = %token, events, "token loaded: working it");
        for input in waiting {
            self.handle(now, input);
        }
        // The previous holder may have stopped mid-sync: bring the mirror up to date.
        for kind in SyncKind::ALL {
            self.core
                .request_sync(now, &token, kind, false, "lease acquired");
        }
    }

    fn maybe_take(&mut self) {
        let t = &mut self.tokens;
        if t.taking || t.loaded.is_empty() {
            t.next_take = None;
            return;
        }
        let at = *t
            .next_take
            .get_or_insert_with(|| tokio::time::Instant::now() + TAKE_EVERY);
        if tokio::time::Instant::now() < at {
            return;
        }
        t.taking = true;
        t.next_take = None;
        let tokens: Vec<String> = t.loaded.iter().cloned().collect();
        let store = self.store.clone();
        let results = self.inputs_tx.clone();
        self.tasks.spawn(async move {
            let result = store.take_handoffs(tokens).await;
            let _ = results.send(Input::Handoffs(result)).await;
        });
    }

    pub(super) fn handoffs_taken(
        &mut self,
        now: Timestamp,
        result: Result<Vec<Taken>, StoreError>,
    ) {
        self.tokens.taking = false;
        let items = match result {
            Ok(items) => items,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the handoffs; trying again");
                return;
            }
        };
        if items.len() >= crate::store::handoffs::TAKE_LIMIT as usize {
            // More are waiting: take them on the next turn.
            self.tokens.next_take = Some(tokio::time::Instant::now());
        }
        for item in items {
            match item {
                Taken::Event(rec, notes) if self.tokens.works(&rec.token) => {
                    tracing::debug!(event_id = %rec.event_id, "event tracked on another instance taken over");
                    self.core.recover(now, *rec, notes);
                }
                Taken::Notification(n) if self.tokens.works(&n.token) => {
                    self.core.notification(now, n);
                }
                Taken::Sync {
                    token,
                    kind,
                    full,
                    cause,
                } if self.tokens.works(&token) => {
                    self.core.request_sync(now, &token, kind, full, &cause);
                }
                // Taken for a token let go of since: its next holder loads it from the store.
                _ => {}
            }
        }
    }

    /// Stores an event tracked for a token another instance works, for that instance.
    pub(super) fn track_elsewhere(
        &mut self,
        now: Timestamp,
        record: EventRecord,
        request: Option<String>,
        reply: oneshot::Sender<TrackReply>,
    ) {
        let change = Core::insert_change(now, &record, request);
        let store = self.store.clone();
        self.tasks.spawn(async move {
            let answer = match store.track_elsewhere(change, now).await {
                Ok(TrackedElsewhere::Inserted) => TrackReply::Created(record),
                Ok(TrackedElsewhere::Exists(rec))
                    if rec.token == record.token && rec.event_type == record.event_type =>
                {
                    TrackReply::Existing(*rec)
                }
                Ok(TrackedElsewhere::Exists(rec)) => TrackReply::Conflict {
                    token: rec.token,
                    event_type: rec.event_type,
                },
                Err(e) => TrackReply::NotCommitted(e.to_string()),
            };
            let _ = reply.send(answer);
        });
    }

    pub(super) fn hand_off_sync(
        &mut self,
        now: Timestamp,
        token: String,
        kind: SyncKind,
        full: bool,
        cause: String,
        reply: oneshot::Sender<SyncTicket>,
    ) {
        let store = self.store.clone();
        self.tasks.spawn(async move {
            let item = Handoff::Sync { kind, full, cause };
            match store.hand_off(&token, vec![item], now).await {
                Ok(()) => {
                    let _ = reply.send(SyncTicket {
                        sync_id: None,
                        queued: true,
                        queued_behind: None,
                        starts_at: None,
                    });
                }
                // Dropping the reply tells the API it was not taken.
                Err(e) => {
                    tracing::warn!(token = %token, error = %e, "cannot hand a sync request off")
                }
            }
        });
    }
}
