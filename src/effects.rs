//! The executor's effects against Apple: Event Status polls, resubmissions and syncs into the
//! mirror. A thin adapter: it maps Apple's answers to the core's inputs and records what it
//! learned (sync runs, versionIds, token health) in the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;

use crate::apple::model::{EventStatus, RequestKind};
use crate::apple::{ApiError, AppleClient, TokenHealth};
use crate::core::{EventType, StatusResult, SyncKind};
use crate::executor::Effects;
use crate::metrics::Metrics;
use crate::store::queries::{self, SyncEnd};
use crate::store::{mirror, Store};
use crate::time::Timestamp;

pub struct AppleEffects {
    client: AppleClient,
    store: Store,
    metrics: Metrics,
    /// Last health written per token, so the store is only told of changes.
    health: Arc<Mutex<HashMap<String, bool>>>,
}

impl AppleEffects {
    pub fn new(client: AppleClient, store: Store, metrics: Metrics) -> AppleEffects {
        AppleEffects {
            client,
            store,
            metrics,
            health: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

/// Records a token's health in the store when it changed (expired, revoked, unauthorized,
/// or healthy again after a reload).
pub async fn note_health(
    client: &AppleClient,
    store: &Store,
    cache: &Mutex<HashMap<String, bool>>,
    token: &str,
) {
    let Some(health) = client.token_health(token) else {
        return;
    };
    let (healthy, reason, since) = match &health {
        TokenHealth::Healthy => (true, None, Timestamp::now()),
        TokenHealth::Unhealthy { reason, since } => (false, Some(reason.to_string()), *since),
    };
    let changed = {
        let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
        c.insert(token.to_string(), healthy) != Some(healthy)
    };
    if !changed {
        return;
    }
    if !healthy {
        tracing::error!(token = %token, reason = reason.as_deref().unwrap_or(""),
            "token is unhealthy; its traffic stops until the configuration is reloaded");
    }
    let t = token.to_string();
    let label = if healthy { "healthy" } else { "unhealthy" };
    let r = store
        .write(move |c| queries::set_token_health(c, &t, label, reason.as_deref(), since))
        .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "cannot record token health");
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
    fn poll_status(&self, token: String, event_id: String) -> BoxFuture<'static, StatusResult> {
        let client = self.client.clone();
        let store = self.store.clone();
        let cache = self.health.clone();
        Box::pin(async move {
            let r = client.event_status(&token, &event_id).await;
            if let Err(e) = &r {
                tracing::debug!(token = %token, event_id = %event_id, error = %e, "Event Status failed");
            }
            note_health(&client, &store, &cache, &token).await;
            status_result(r)
        })
    }

    fn resubmit(
        &self,
        token: String,
        event_type: EventType,
        body: String,
    ) -> BoxFuture<'static, Result<String, String>> {
        let client = self.client.clone();
        let store = self.store.clone();
        let cache = self.health.clone();
        Box::pin(async move {
            let value: serde_json::Value = serde_json::from_str(&body)
                .map_err(|e| format!("the stored request body is not JSON: {e}"))?;
            let r = client
                .submit(&token, RequestKind::for_event_type(event_type), &value)
                .await;
            note_health(&client, &store, &cache, &token).await;
            r.map(|ev| ev.event_id).map_err(|e| e.to_string())
        })
    }

    fn sync(
        &self,
        sync_id: u64,
        token: String,
        kind: SyncKind,
        full: bool,
    ) -> BoxFuture<'static, bool> {
        let client = self.client.clone();
        let store = self.store.clone();
        let cache = self.health.clone();
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let ok = run_sync(&client, &store, sync_id, &token, kind, full).await;
            metrics.sync(&token, kind.as_str(), if ok { "ok" } else { "failed" });
            note_health(&client, &store, &cache, &token).await;
            ok
        })
    }
}

enum Fetched {
    Assets(crate::apple::Traversal<crate::apple::model::ResponseAsset>),
    Assignments(crate::apple::Traversal<crate::apple::model::Assignment>),
    Users(crate::apple::Traversal<crate::apple::model::ResponseUser>),
}

async fn fetch(
    client: &AppleClient,
    token: &str,
    kind: SyncKind,
    since: Option<&str>,
) -> Result<Fetched, ApiError> {
    Ok(match kind {
        SyncKind::Assets => Fetched::Assets(client.get_assets(token).await?),
        SyncKind::Assignments => Fetched::Assignments(client.get_assignments(token, since).await?),
        SyncKind::Users => Fetched::Users(client.get_users(token, since).await?),
    })
}

/// One sync run: traverse, then apply to the mirror, store the versionId and finish the run
/// row, all in one transaction. Returns whether it succeeded.
pub async fn run_sync(
    client: &AppleClient,
    store: &Store,
    sync_id: u64,
    token: &str,
    kind: SyncKind,
    full: bool,
) -> bool {
    let started = Timestamp::now();
    let since = if full || !kind.supports_incremental() {
        None
    } else {
        let t = token.to_string();
        store
            .read(move |c| mirror::get_version(c, &t, kind))
            .await
            .ok()
            .flatten()
    };
    let mut fetched = fetch(client, token, kind, since.as_deref()).await;
    if matches!(fetched, Err(ApiError::InvalidVersion)) {
        tracing::info!(token = %token, sync_id, kind = %kind, "stored versionId refused (9721); falling back to a full sync");
        fetched = fetch(client, token, kind, None).await;
    }
    let t = token.to_string();
    match fetched {
        Err(e) => {
            tracing::warn!(token = %token, sync_id, kind = %kind, error = %e, "sync failed");
            let end = SyncEnd {
                ok: false,
                error: Some(e.to_string()),
                ..SyncEnd::default()
            };
            let _ = store
                .write(move |c| queries::sync_finished(c, sync_id, Timestamp::now(), &end))
                .await;
            false
        }
        Ok(data) => {
            let r = store
                .write(move |c| {
                    let now = Timestamp::now();
                    let (pages, records, version, replace, incremental) = match &data {
                        Fetched::Assets(tr) => {
                            let replace = tr.consistent;
                            mirror::apply_assets(c, &t, &tr.records, replace, now)?;
                            (
                                tr.pages,
                                tr.records.len(),
                                tr.version_id.clone(),
                                replace,
                                false,
                            )
                        }
                        Fetched::Assignments(tr) => {
                            let replace = !tr.incremental && tr.consistent;
                            mirror::apply_assignments(c, &t, &tr.records, replace, now)?;
                            (
                                tr.pages,
                                tr.records.len(),
                                tr.version_id.clone(),
                                replace,
                                tr.incremental,
                            )
                        }
                        Fetched::Users(tr) => {
                            let replace = !tr.incremental && tr.consistent;
                            mirror::apply_users(c, &t, &tr.records, replace, now)?;
                            (
                                tr.pages,
                                tr.records.len(),
                                tr.version_id.clone(),
                                replace,
                                tr.incremental,
                            )
                        }
                    };
                    if replace {
                        // Pages read before a notification must not undo it.
                        let replayed = crate::webhook::replay_since(c, &t, started, now)?;
                        if replayed > 0 && kind == SyncKind::Assets {
                            mirror::recount_all(c, &t, now)?;
                        }
                    }
                    if kind.supports_incremental() {
                        mirror::set_version(c, &t, kind, version.as_deref())?;
                    }
                    // Data that kept changing under a full read: what was read is kept
                    // (upserted), but it cannot prove removals, so the run does not count and
                    // the core retries it.
                    let reliable = incremental || replace;
                    queries::sync_finished(
                        c,
                        sync_id,
                        now,
                        &SyncEnd {
                            pages,
                            records: records as u64,
                            ok: reliable,
                            error: (!reliable).then(|| {
                                "Apple's data kept changing during the read; retrying".to_string()
                            }),
                            version_id: version,
                        },
                    )?;
                    Ok((pages, records, incremental, reliable))
                })
                .await;
            match r {
                Ok((pages, records, incremental, reliable)) => {
                    tracing::info!(token = %token, sync_id, kind = %kind, pages, records, incremental, reliable, "sync finished");
                    reliable
                }
                Err(e) => {
                    tracing::error!(token = %token, sync_id, error = %e, "cannot store a sync");
                    false
                }
            }
        }
    }
}
