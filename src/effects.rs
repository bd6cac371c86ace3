//! The executor's effects against Apple: Event Status polls, resubmissions, syncs into the
//! mirror, and the periodic chores. A thin adapter: it maps Apple's answers to the core's
//! inputs; what a sync does lives in `mirror`, token health in `tokens`.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::Mutex;

use crate::apple::model::{EventStatus, RequestKind};
use crate::apple::{ApiError, AppleClient};
use crate::core::periodic::Chore;
use crate::core::{EventType, StatusResult, SyncKind, SyncOutcome};
use crate::executor::{Effects, ResubmitError};
use crate::metrics::Metrics;
use crate::scheduler::Upkeep;
use crate::store::Store;
use crate::time::Timestamp;

pub struct AppleEffects {
    client: AppleClient,
    store: Store,
    upkeep: Arc<Mutex<Upkeep>>,
    retention: Duration,
    metrics: Metrics,
}

impl AppleEffects {
    pub fn new(
        client: AppleClient,
        store: Store,
        upkeep: Upkeep,
        retention: Duration,
        metrics: Metrics,
    ) -> AppleEffects {
        AppleEffects {
            client,
            store,
            upkeep: Arc::new(Mutex::new(upkeep)),
            retention,
            metrics,
        }
    }
}

fn status_result(r: Result<crate::apple::model::StatusResponse, ApiError>) -> StatusResult {
    let n = |v: Option<i64>| v.and_then(|v| u32::try_from(v).ok()).unwrap_or(0);
    match r {
        Ok(s) => match s.event_status {
            EventStatus::Pending => StatusResult::Pending,
            EventStatus::Complete => StatusResult::Complete {
                num_requested: n(s.num_requested),
                num_completed: n(s.num_completed),
            },
            EventStatus::Failed => StatusResult::Failed {
                num_requested: n(s.num_requested),
                num_completed: n(s.num_completed),
                failures: s.failures.iter().map(|f| f.to_failure()).collect(),
            },
            EventStatus::Unknown => StatusResult::Retry {
                not_before: None,
                reason: "Event Status answered an unknown eventStatus".into(),
            },
        },
        Err(ApiError::EventNotFound) => StatusResult::NotFound,
        Err(e) => StatusResult::Retry {
            not_before: e.retry_after().map(|d| Timestamp::now().saturating_add(d)),
            reason: e.to_string(),
        },
    }
}

impl Effects for AppleEffects {
    fn pause_until(&self, token: &str, until: Timestamp) {
        self.client.pause_until(token, until);
    }

    fn poll_status(&self, token: String, event_id: String) -> BoxFuture<'static, StatusResult> {
        let client = self.client.clone();
        Box::pin(async move {
            let r = client.event_status(&token, &event_id).await;
            if let Err(e) = &r {
                tracing::debug!(token = %token, event_id = %event_id, error = %e, "Event Status failed");
            }
            status_result(r)
        })
    }

    fn resubmit(
        &self,
        token: String,
        event_type: EventType,
        body: String,
    ) -> BoxFuture<'static, Result<String, ResubmitError>> {
        let client = self.client.clone();
        Box::pin(async move {
            let value: serde_json::Value =
                serde_json::from_str(&body).map_err(|e| ResubmitError::BadBody(e.to_string()))?;
            client
                .submit(&token, RequestKind::for_event_type(event_type), &value)
                .await
                .map(|ev| ev.event_id)
                .map_err(|e| ResubmitError::Apple(e.to_string()))
        })
    }

    fn sync(
        &self,
        sync_id: u64,
        token: String,
        kind: SyncKind,
        full: bool,
    ) -> BoxFuture<'static, SyncOutcome> {
        let client = self.client.clone();
        let store = self.store.clone();
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let outcome =
                crate::mirror::run::run(&client, &store, sync_id, &token, kind, full).await;
            metrics.sync(&token, kind.as_str(), outcome.label());
            outcome
        })
    }

    fn chore(&self, chore: Chore, now: Timestamp) -> BoxFuture<'static, ()> {
        let store = self.store.clone();
        let upkeep = self.upkeep.clone();
        let retention = self.retention;
        Box::pin(async move {
            match chore {
                Chore::Retention => crate::executor::prune(&store, now, retention).await,
                Chore::Upkeep => upkeep.lock().await.once(now).await,
            }
        })
    }
}
