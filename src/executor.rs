//! The one loop that drives the core (patterns.md §6): it reads the clock once per turn, feeds
//! inputs to the [`Core`], persists each turn's changes in one transaction, and only after
//! that commit dispatches the turn's effects (write-ahead: a decision is durable before it
//! acts, so a crash never repeats a resubmission the store does not know about).
//!
//! Inputs arrive on two channels. `committed` carries what the store's writer thread has just
//! made durable (tracked events, notifications), in commit order; it is unbounded because
//! its producers are: each HTTP request waits for its own commit, and the servers bound their
//! concurrent requests. `inputs` (bounded) carries sync requests and the answers of effects.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::core::{
    Action, Change, Core, EventRecord, EventType, NotificationInput, StatusResult, SyncKind,
};
use crate::store::{queries, Store};
use crate::time::Timestamp;

/// What the executor is told.
#[derive(Debug)]
pub enum Input {
    /// A newly tracked event, committed, with notifications that arrived before it.
    Tracked {
        record: EventRecord,
        notes: Vec<NotificationInput>,
    },
    /// A committed ASSET_MANAGEMENT / USER_MANAGEMENT notification.
    Notification(NotificationInput),
    /// Run a sync (API, cron, ASSET_COUNT / USER_ASSOCIATED notifications). `reply` learns
    /// which run serves the request.
    Sync {
        token: String,
        kind: SyncKind,
        full: bool,
        cause: String,
        reply: Option<oneshot::Sender<SyncTicket>>,
    },
    Status {
        event_id: String,
        result: StatusResult,
    },
    Resubmitted {
        event_id: String,
        result: Result<String, String>,
    },
    SyncFinished {
        sync_id: u64,
        ok: bool,
    },
}

/// Which sync run serves a sync request: the one running now (possibly just started), and
/// whether another run is queued after it (coalesced requests share that one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncTicket {
    pub sync_id: Option<u64>,
    pub queued: bool,
}

/// The Apple side of the effects. Implemented by the Apple client adapter; the executor only
/// knows this trait.
pub trait Effects: Send + Sync + 'static {
    /// Event Status for one event.
    fn poll_status(&self, token: String, event_id: String) -> BoxFuture<'static, StatusResult>;
    /// Resubmits a stored request body; the new eventId, or why not.
    fn resubmit(
        &self,
        token: String,
        event_type: EventType,
        body: String,
    ) -> BoxFuture<'static, Result<String, String>>;
    /// Runs one sync and records it (the run row exists already); `true` on success.
    fn sync(
        &self,
        sync_id: u64,
        token: String,
        kind: SyncKind,
        full: bool,
    ) -> BoxFuture<'static, bool>;
}

/// Effects for a daemon without an Apple client: every call is answered "try later".
pub struct NoApple;

impl Effects for NoApple {
    fn poll_status(&self, _token: String, _event_id: String) -> BoxFuture<'static, StatusResult> {
        Box::pin(async {
            StatusResult::Retry {
                not_before: None,
                reason: "no Apple client configured".into(),
            }
        })
    }
    fn resubmit(
        &self,
        _token: String,
        _event_type: EventType,
        _body: String,
    ) -> BoxFuture<'static, Result<String, String>> {
        Box::pin(async { Err("no Apple client configured".to_string()) })
    }
    fn sync(
        &self,
        _sync_id: u64,
        _token: String,
        _kind: SyncKind,
        _full: bool,
    ) -> BoxFuture<'static, bool> {
        Box::pin(async { false })
    }
}

/// Handles for talking to a running executor.
#[derive(Clone)]
pub struct ExecutorHandle {
    pub committed: mpsc::UnboundedSender<Input>,
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
}

/// Most inputs taken in one turn: bounds the turn's latency and transaction size.
const MAX_INPUTS_PER_TURN: usize = 512;
/// The loop wakes at least this often (heartbeat, health).
const IDLE_WAKE: Duration = Duration::from_secs(5);

pub struct Executor {
    core: Core,
    store: Store,
    effects: Arc<dyn Effects>,
    committed_rx: mpsc::UnboundedReceiver<Input>,
    committed_tx: mpsc::UnboundedSender<Input>,
    inputs_rx: mpsc::Receiver<Input>,
    inputs_tx: mpsc::Sender<Input>,
    heartbeat: Arc<AtomicI64>,
    tasks: tokio::task::JoinSet<()>,
}

impl Executor {
    pub fn new(core: Core, store: Store, effects: Arc<dyn Effects>) -> (Executor, ExecutorHandle) {
        let (committed_tx, committed_rx) = mpsc::unbounded_channel();
        let (inputs_tx, inputs_rx) = mpsc::channel(4096);
        let heartbeat = Arc::new(AtomicI64::new(Timestamp::now().0));
        let handle = ExecutorHandle {
            committed: committed_tx.clone(),
            inputs: inputs_tx.clone(),
            heartbeat: heartbeat.clone(),
        };
        (
            Executor {
                core,
                store,
                effects,
                committed_rx,
                committed_tx,
                inputs_rx,
                inputs_tx,
                heartbeat,
                tasks: tokio::task::JoinSet::new(),
            },
            handle,
        )
    }

    /// Runs until `shutdown` is cancelled, then commits what is decided and waits up to
    /// `drain` for in-flight effects before abandoning them (their events are re-polled after
    /// restart).
    pub async fn run(mut self, shutdown: CancellationToken, drain: Duration) {
        // Anything recovered and already due fires on the first turn.
        self.core.timeout(Timestamp::now());
        self.flush().await;
        loop {
            let now = Timestamp::now();
            self.heartbeat.store(now.0, Ordering::Relaxed);
            let wait = self
                .core
                .poll_timeout()
                .map(|t| t.since(now))
                .unwrap_or(IDLE_WAKE)
                .min(IDLE_WAKE);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(input) = self.committed_rx.recv() => self.handle(input),
                Some(input) = self.inputs_rx.recv() => self.handle(input),
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            // Take whatever else is ready, so a burst costs one transaction.
            for _ in 0..MAX_INPUTS_PER_TURN {
                match self.committed_rx.try_recv() {
                    Ok(i) => self.handle(i),
                    Err(_) => match self.inputs_rx.try_recv() {
                        Ok(i) => self.handle(i),
                        Err(_) => break,
                    },
                }
            }
            self.core.timeout(Timestamp::now());
            self.flush().await;
        }
        self.flush().await;
        let deadline = tokio::time::Instant::now() + drain;
        while !self.tasks.is_empty() {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        in_flight = self.tasks.len(),
                        "abandoning in-flight Apple calls at shutdown"
                    );
                    self.tasks.abort_all();
                    break;
                }
            }
        }
        // Answers that arrived while draining are applied and committed too.
        while let Ok(i) = self.inputs_rx.try_recv() {
            self.handle(i);
        }
        self.flush_and_wait().await;
    }

    fn handle(&mut self, input: Input) {
        let now = Timestamp::now();
        match input {
            Input::Tracked { record, notes } => self.core.track(now, record, notes),
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
            } => {
                self.core.request_sync(now, &token, kind, full, &cause);
                if let Some(reply) = reply {
                    let (running, queued, _) = self
                        .core
                        .sync_state(&token, kind)
                        .unwrap_or((None, false, 0));
                    let _ = reply.send(SyncTicket {
                        sync_id: running,
                        queued,
                    });
                }
            }
            Input::Status { event_id, result } => self.core.status_result(now, &event_id, result),
            Input::Resubmitted { event_id, result } => {
                self.core.resubmit_result(now, &event_id, result)
            }
            Input::SyncFinished { sync_id, ok } => self.core.sync_finished(now, sync_id, ok),
        }
    }

    /// Drains the core's actions: persists the changes in one transaction, then dispatches the
    /// effects once it committed.
    async fn flush(&mut self) {
        if let Some(commit) = self.persist_turn().await {
            let (changes_committed, effects) = commit;
            let store = self.store.clone();
            let fx = self.effects.clone();
            let results = self.inputs_tx.clone();
            self.tasks.spawn(async move {
                let committed = matches!(changes_committed.await, Ok(Ok(())));
                dispatch(effects, committed, store, fx, results).await;
            });
        }
    }

    async fn flush_and_wait(&mut self) {
        if let Some((commit, _effects)) = self.persist_turn().await {
            if let Ok(Err(e)) = commit.await {
                tracing::error!(error = %e, "final commit failed");
            }
        }
    }

    #[allow(clippy::type_complexity)]
    async fn persist_turn(
        &mut self,
    ) -> Option<(
        oneshot::Receiver<Result<(), crate::store::StoreError>>,
        Vec<Action>,
    )> {
        let mut changes: Vec<Change> = Vec::new();
        let mut effects: Vec<Action> = Vec::new();
        while let Some(a) = self.core.poll_action() {
            match a {
                Action::Persist(c) => changes.push(*c),
                other => effects.push(other),
            }
        }
        if changes.is_empty() && effects.is_empty() {
            return None;
        }
        let now = Timestamp::now();
        let starts: Vec<(u64, String, SyncKind, bool, String)> = effects
            .iter()
            .filter_map(|a| match a {
                Action::StartSync {
                    sync_id,
                    token,
                    kind,
                    full,
                    cause,
                } => Some((*sync_id, token.clone(), *kind, *full, cause.clone())),
                _ => None,
            })
            .collect();
        let (tx, rx) = oneshot::channel();
        let committed = self.committed_tx.clone();
        let queued = self
            .store
            .write_detached(
                move |conn| {
                    queries::apply_changes(conn, &changes)?;
                    for (id, token, kind, full, cause) in &starts {
                        queries::sync_started(conn, *id, token, *kind, *full, cause, now)?;
                    }
                    // A resubmission's new event may have had notifications before we knew
                    // its id: hand them to the core once the event is committed.
                    for c in changes.iter().filter(|c| c.insert) {
                        for n in queries::unapplied_notifications_for(conn, &c.event.event_id)? {
                            let _ = committed.send(Input::Notification(n));
                        }
                    }
                    Ok(())
                },
                tx,
            )
            .await;
        if let Err(e) = queued {
            tracing::error!(error = %e, "cannot queue the turn's changes");
        }
        Some((rx, effects))
    }
}

/// Runs a turn's effects after its commit. If the commit failed, nothing is sent to Apple and
/// the core is told each call failed, so it retries later.
async fn dispatch(
    effects: Vec<Action>,
    committed: bool,
    store: Store,
    fx: Arc<dyn Effects>,
    results: mpsc::Sender<Input>,
) {
    let mut set = tokio::task::JoinSet::new();
    for action in effects {
        let fx = fx.clone();
        let results = results.clone();
        let store = store.clone();
        set.spawn(async move {
            let input = match action {
                Action::Poll { token, event_id } => {
                    let result = if committed {
                        fx.poll_status(token, event_id.clone()).await
                    } else {
                        StatusResult::Retry {
                            not_before: None,
                            reason: "state could not be committed".into(),
                        }
                    };
                    Input::Status { event_id, result }
                }
                Action::Resubmit {
                    token,
                    event_id,
                    event_type,
                } => {
                    let result = if !committed {
                        Err("state could not be committed".to_string())
                    } else {
                        let id = event_id.clone();
                        match store.read(move |c| queries::request_body(c, &id)).await {
                            Ok(Some(body)) => fx.resubmit(token, event_type, body).await,
                            Ok(None) => Err("the request body is no longer stored".into()),
                            Err(e) => Err(format!("cannot read the request body: {e}")),
                        }
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
                    let ok = committed && fx.sync(sync_id, token, kind, full).await;
                    Input::SyncFinished { sync_id, ok }
                }
                Action::Persist(_) => return,
            };
            let _ = results.send(input).await;
        });
    }
    while set.join_next().await.is_some() {}
}
