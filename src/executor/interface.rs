//! What the executor takes and what it needs from the adapters: its inputs, the answers it
//! gives trackers and sync requesters, and the [`Effects`] trait the Apple adapter implements.

use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::oneshot;

use crate::core::periodic::Chore;
use crate::core::{EventRecord, EventType, NotificationInput, StatusResult, SyncKind, SyncOutcome};
use crate::store::{Loaded, Store, StoreError, Taken};
use crate::time::Timestamp;

/// What the executor is told.
#[derive(Debug)]
pub enum Input {
    /// Track a new event (API, CLI, submissions). `reply` is answered once it is durable.
    Track {
        record: EventRecord,
        request: Option<String>,
        reply: oneshot::Sender<TrackReply>,
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
        result: Result<String, ResubmitError>,
    },
    SyncFinished {
        sync_id: u64,
        outcome: SyncOutcome,
    },
    ChoreDone(Chore),
    /// A newly acquired token's stored state (several instances).
    Loaded {
        token: String,
        result: Result<Loaded, StoreError>,
    },
    /// Handoffs taken for the tokens this instance works (several instances).
    Handoffs(Result<Vec<Taken>, StoreError>),
}

/// The answer to [`Input::Track`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackReply {
    /// Newly tracked and committed.
    Created(EventRecord),
    /// Already tracked with the same token and type (committed).
    Existing(EventRecord),
    /// The eventId is tracked with another token or type.
    Conflict {
        token: String,
        event_type: EventType,
    },
    /// It could not be committed; the caller may try again.
    NotCommitted(String),
}

/// Why a resubmission did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResubmitError {
    #[error("state could not be committed")]
    NotCommitted,
    #[error("the request body is no longer stored")]
    NoBody,
    #[error("cannot read the request body: {0}")]
    Store(String),
    #[error("the stored request body is not JSON: {0}")]
    BadBody(String),
    #[error("Apple did not accept it: {0}")]
    Apple(String),
}

/// Which sync run serves a sync request: the one running now (possibly just started), and
/// whether another run is queued after it (coalesced requests share that one), and when the
/// queued run may start if it has to wait.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncTicket {
    pub sync_id: Option<u64>,
    pub queued: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queued_behind: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<String>,
}

/// The Apple side of the effects, and the periodic chores. Implemented by the adapters; the
/// executor only knows this trait.
pub trait Effects: Send + Sync + 'static {
    /// Event Status for one event.
    fn poll_status(&self, token: String, event_id: String) -> BoxFuture<'static, StatusResult>;
    /// Resubmits a stored request body; the new eventId, or why not.
    fn resubmit(
        &self,
        token: String,
        event_type: EventType,
        body: String,
    ) -> BoxFuture<'static, Result<String, ResubmitError>>;
    /// Runs one sync and records it (the run row exists already).
    fn sync(
        &self,
        sync_id: u64,
        token: String,
        kind: SyncKind,
        full: bool,
    ) -> BoxFuture<'static, SyncOutcome>;
    /// Runs one periodic chore as of `now`.
    fn chore(&self, chore: Chore, now: Timestamp) -> BoxFuture<'static, ()>;
    /// A token was just acquired whose previous holder was told by Apple (Retry-After) to
    /// send nothing before `until`: honour it too.
    fn pause_until(&self, _token: &str, _until: Timestamp) {}
}

/// Effects for a daemon without an Apple client: every call is answered "try later".
pub struct NoApple {
    pub store: Store,
    pub retention: Duration,
}

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
    ) -> BoxFuture<'static, Result<String, ResubmitError>> {
        Box::pin(async { Err(ResubmitError::Apple("no Apple client configured".into())) })
    }
    fn sync(
        &self,
        _sync_id: u64,
        _token: String,
        _kind: SyncKind,
        _full: bool,
    ) -> BoxFuture<'static, SyncOutcome> {
        Box::pin(async { SyncOutcome::Transient("no Apple client configured".into()) })
    }
    fn chore(&self, chore: Chore, now: Timestamp) -> BoxFuture<'static, ()> {
        let store = self.store.clone();
        let retention = self.retention;
        Box::pin(async move {
            if chore == Chore::Retention {
                prune(&store, now, retention).await;
            }
        })
    }
}

/// Prunes settled events older than `retention` as of `now`, in bounded batches.
pub async fn prune(store: &Store, now: Timestamp, retention: Duration) {
    let before = now.saturating_sub(retention);
    for _ in 0..1000 {
        match store.prune_settled(before, 500).await {
            Ok(n) if n > 0 => tracing::info!(pruned = n, "settled events pruned"),
            Ok(_) => return,
            Err(e) => {
                tracing::error!(error = %e, "pruning failed");
                return;
            }
        }
    }
}
