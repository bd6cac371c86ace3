//! Apple's notifications in (docs/architecture.md, "Webhook"): `POST {path_prefix}/{token}`
//! with `Authorization: Bearer <notification auth token>`.
//!
//! Nothing is read from the body before the caller is authenticated: the token name comes from
//! the path and the bearer from the headers, and only then is the body read, up to
//! `max_body_bytes` (a declared `Content-Length` over it is refused without reading). An
//! unknown token name gets the same 401 as a wrong bearer (so names cannot be probed), after
//! a constant-time comparison against a stand-in secret.
//!
//! A notification is acknowledged (200) only after it is committed, together with its effect
//! on the mirror, in the store's next group commit; it is then handed to the executor.
//! Handling is at-least-once from Apple's side and exactly-once here: a duplicate
//! `notificationId` is answered 200 and has no second effect.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::apple::model::{
    parse_notification, Notification, NotificationPayload, NotificationResult,
};
use crate::core::{NotificationInput, SyncKind};
use crate::executor::Input;
use crate::store::{Handoff, NewNotification, Store};
use crate::time::Timestamp;
use crate::tokens::Registry;

/// Unparseable bodies kept for inspection, at most.
const QUARANTINE_CAP: u32 = 1000;

#[derive(Clone)]
pub struct WebhookState {
    pub store: Store,
    pub executor: tokio::sync::mpsc::Sender<Input>,
    pub tokens: Registry,
    /// Bounds requests waiting on a commit.
    pub writes: Arc<Semaphore>,
    pub metrics: crate::metrics::Metrics,
}

pub fn router(state: WebhookState, path_prefix: &str, max_body_bytes: usize) -> Router {
    // The body is the last extractor and a raw stream: axum reads none of it before the
    // handler has checked the token name and the bearer.
    let handler =
        move |state: State<WebhookState>, token: Path<String>, headers: HeaderMap, body: Body| {
            receive(state, token, headers, body, max_body_bytes)
        };
    Router::new()
        .route(&format!("{path_prefix}/{{token}}"), post(handler))
        .with_state(state)
}

/// Compared with the bearer of a request for a token name that is not configured, so that
/// answer takes as long as a wrong bearer's.
const STAND_IN_SECRET: &str = "vpp-reconciler stand-in for an unknown token name";

/// Why a body could not be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the body is over the limit of {max} bytes")]
    TooLarge { max: usize },
    #[error("the body could not be read: {0}")]
    Broken(String),
}

/// Reads `body` into memory, stopping as soon as it passes `max` bytes; a declared
/// `Content-Length` over `max` is refused before anything is read.
pub async fn read_capped(headers: &HeaderMap, body: Body, max: usize) -> Result<Bytes, BodyError> {
    use futures::StreamExt;
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge { max });
    }
    let mut stream = body.into_data_stream();
    let mut buf = Vec::with_capacity(declared.map_or(0, |n| n as usize).min(max));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| BodyError::Broken(e.to_string()))?;
        if buf.len() + chunk.len() > max {
            return Err(BodyError::TooLarge { max });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

fn reply(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// What one notification does to the core, if anything.
pub fn core_input(token: &str, n: &Notification) -> Option<Input> {
    let known = |r: NotificationResult| r != NotificationResult::Unknown;
    match &n.notification {
        // A result we do not know says nothing about the outcome: kept, and Event Status
        // will tell.
        NotificationPayload::AssetManagement(p) if !known(p.result) => None,
        NotificationPayload::UserManagement(p) if !known(p.result) => None,
        NotificationPayload::AssetManagement(p) => Some(Input::Notification(NotificationInput {
            notification_id: n.notification_id.clone(),
            token: token.to_string(),
            event_id: p.event_id.clone(),
            success: p.result == NotificationResult::Success,
            entities: u32::try_from(p.assignments.len()).unwrap_or(u32::MAX),
            error: p.error.as_ref().map(|e| e.to_failure()),
        })),
        NotificationPayload::UserManagement(p) => Some(Input::Notification(NotificationInput {
            notification_id: n.notification_id.clone(),
            token: token.to_string(),
            event_id: p.event_id.clone(),
            success: p.result == NotificationResult::Success,
            entities: u32::try_from(p.users.len()).unwrap_or(u32::MAX),
            error: p.error.as_ref().map(|e| e.to_failure()),
        })),
        NotificationPayload::AssetCount(_) => Some(Input::Sync {
            token: token.to_string(),
            kind: SyncKind::Assets,
            full: true,
            cause: "ASSET_COUNT notification".into(),
            reply: None,
        }),
        NotificationPayload::UserAssociated(_) => Some(Input::Sync {
            token: token.to_string(),
            kind: SyncKind::Users,
            full: false,
            cause: "USER_ASSOCIATED notification".into(),
            reply: None,
        }),
        NotificationPayload::Test | NotificationPayload::Other(_) => None,
    }
}

/// A SUCCESS ASSET_MANAGEMENT notification moved the mirror's licence counts by its own
/// entities, but an assets sync read between Apple's processing and this notification already
/// counted them: a later assets sync (coalesced, and held back while the token is busy) puts
/// the counts back on Apple's numbers (docs/architecture.md, "The mirror").
pub fn counts_sync(token: &str, n: &Notification) -> Option<Input> {
    match &n.notification {
        NotificationPayload::AssetManagement(p) if p.result == NotificationResult::Success => {
            Some(Input::Sync {
                token: token.to_string(),
                kind: SyncKind::Assets,
                full: true,
                cause: "licence counts after ASSET_MANAGEMENT notifications".into(),
                reply: None,
            })
        }
        _ => None,
    }
}

/// The row a notification is stored as.
pub fn stored(token: &str, n: &Notification, body: &[u8], now: Timestamp) -> NewNotification {
    let (event_id, result, entities, error) = match &n.notification {
        NotificationPayload::AssetManagement(p) => (
            Some(p.event_id.clone()),
            Some(p.result.as_str().to_string()),
            u32::try_from(p.assignments.len()).ok(),
            p.error.as_ref().map(|e| e.to_failure()),
        ),
        NotificationPayload::UserManagement(p) => (
            Some(p.event_id.clone()),
            Some(p.result.as_str().to_string()),
            u32::try_from(p.users.len()).ok(),
            p.error.as_ref().map(|e| e.to_failure()),
        ),
        _ => (None, None, None, None),
    };
    NewNotification {
        notification_id: n.notification_id.clone(),
        token: token.to_string(),
        notification_type: n.notification_type_raw.clone(),
        event_id,
        result,
        entities,
        error,
        received_at: now,
        body: String::from_utf8_lossy(body).into_owned(),
    }
}

async fn receive(
    State(state): State<WebhookState>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Body,
    max_body_bytes: usize,
) -> Response {
    let started = Instant::now();
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::secret::bearer)
        .unwrap_or("");
    let known = state.tokens.get(&token);
    let authorized = match &known {
        Some(k) => k.config.notification_auth_token.matches(given.as_bytes()),
        None => {
            // Same work and same answer as a wrong bearer: the token list stays private.
            let _ = crate::secret::Secret::new(STAND_IN_SECRET).matches(given.as_bytes());
            false
        }
    };
    let Some(known) = known.filter(|_| authorized) else {
        // The name is the caller's text: bounded before it reaches the log.
        let name: String = token.chars().take(64).collect();
        tracing::warn!(token = %name, "notification with an unknown token name or a missing or wrong bearer token refused");
        return reply(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    };
    let body = match read_capped(&headers, body, max_body_bytes).await {
        Ok(b) => b,
        Err(e @ BodyError::TooLarge { .. }) => {
            tracing::warn!(token = %token, error = %e, "notification refused");
            return reply(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string());
        }
        Err(e) => return reply(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let Ok(_permit) = state.writes.acquire().await else {
        return reply(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    };
    let now = Timestamp::now();
    let note = match parse_notification(&body) {
        Ok(n) => n,
        Err(e) => {
            let reason = e.to_string();
            tracing::warn!(token = %token, error = %reason, "unparseable notification quarantined");
            let kept = state
                .store
                .quarantine(&token, now, &reason, body.to_vec(), QUARANTINE_CAP)
                .await;
            if let Err(e) = kept {
                tracing::error!(error = %e, "cannot quarantine a notification");
                return reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cannot store the notification",
                );
            }
            return reply(
                StatusCode::BAD_REQUEST,
                &format!("not a notification: {reason}"),
            );
        }
    };
    if let Some(uid) = &known.uid {
        if &note.u_id != uid {
            tracing::warn!(token = %token, uid = %note.u_id, expected = %uid,
                "notification for another location refused");
            return reply(
                StatusCode::BAD_REQUEST,
                &format!("uId {:?} is not the location of token {token}", note.u_id),
            );
        }
    }
    if matches!(note.notification, NotificationPayload::Test) {
        tracing::info!(token = %token, notification_id = %note.notification_id, "TEST_NOTIFICATION received");
    }
    let row = stored(&token, &note, &body, now);
    let input = core_input(&token, &note);
    let recount = counts_sync(&token, &note);
    let (ntype, result) = (
        note.notification_type_raw.clone(),
        row.result.clone().unwrap_or_else(|| "-".into()),
    );
    // What the token's holder must do with it, left for it in the same transaction when
    // another instance holds the token (store::handoffs).
    let handoffs: Vec<Handoff> = input
        .iter()
        .filter(|_| state.store.fences_writes())
        .chain(recount.iter())
        .filter_map(|i| match i {
            Input::Notification(n) => Some(Handoff::Notification {
                notification_id: n.notification_id.clone(),
                event_id: n.event_id.clone(),
            }),
            Input::Sync {
                kind, full, cause, ..
            } => Some(Handoff::Sync {
                kind: *kind,
                full: *full,
                cause: cause.clone(),
            }),
            _ => None,
        })
        .collect();
    let written = state
        .store
        .record_notification_for(row, note, now, handoffs)
        .await;
    if let (Ok(true), Some(input)) = (&written, input) {
        // Committed: if the loop is gone (shutdown) the store still has it, unapplied, and
        // recovery applies it after the restart.
        let _ = state.executor.send(input).await;
    }
    if let (Ok(true), Some(sync)) = (&written, recount) {
        let _ = state.executor.send(sync).await;
    }
    let metrics_result = match &written {
        Ok(true) => result.as_str(),
        Ok(false) => "duplicate",
        Err(_) => "error",
    };
    tracing::debug!(token = %token, r#type = %ntype, result = %metrics_result, "notification handled");
    let metrics = &state.metrics;
    metrics.notification(&token, &ntype, metrics_result);
    metrics.observe_webhook_ack(started.elapsed().as_secs_f64());
    match written {
        Ok(_) => (StatusCode::OK, Json(json!({}))).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot commit a notification");
            reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot store the notification",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(result: &str) -> Notification {
        let body = format!(
            r#"{{"notificationId":"n","notificationType":"ASSET_MANAGEMENT","uId":"1",
            "notification":{{"eventId":"e","result":"{result}","type":"ASSOCIATE",
            "assignments":[{{"adamId":"1","pricingParam":"STDQ","serialNumber":"S"}}]}}}}"#
        );
        parse_notification(body.as_bytes()).unwrap()
    }

    #[test]
    fn only_known_results_drive_events() {
        match core_input("acme", &parse("SUCCESS")) {
            Some(Input::Notification(n)) => {
                assert!(n.success);
                assert_eq!(n.entities, 1);
            }
            other => panic!("{other:?}"),
        }
        match core_input("acme", &parse("FAILURE")) {
            Some(Input::Notification(n)) => assert!(!n.success),
            other => panic!("{other:?}"),
        }
        assert!(core_input("acme", &parse("PARTIAL")).is_none());
    }
}
