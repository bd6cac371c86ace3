//! Submitting through the daemon: `POST /v1/tokens/{token}/requests/{kind}` splits the
//! request within Apple's limits, submits each chunk and tracks each eventId Apple returns.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::events::commit_track;
use super::validate::{known_token, validate_track, TrackFields};
use super::{ApiState, HttpError};
use crate::apple::model::{split_request, Limits, RequestKind};
use crate::apple::ApiError;
use crate::store::EventView;
use crate::time::Timestamp;

pub(super) async fn submit_request(
    State(state): State<ApiState>,
    Path((token, kind)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, HttpError> {
    let kind: RequestKind = kind.parse().map_err(HttpError::bad_request)?;
    known_token(&state, &token)?;
    let Some(apple) = state.apple.clone() else {
        return Err(HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "apple_unavailable",
            "this daemon has no Apple client, so it cannot submit requests",
        ));
    };
    if !apple.may_call(&token) {
        // Several instances: only the holder of the token's lease calls Apple for it.
        let holder = match &state.cluster {
            Some(c) => state
                .store
                .lease_snapshot(c.lease_ttl)
                .await
                .ok()
                .and_then(|s| {
                    s.leases
                        .into_iter()
                        .find(|l| l.token == token && l.expires_at > s.now)
                        .map(|l| l.holder)
                }),
            None => None,
        };
        return Err(HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_holder",
            format!(
                "this instance does not hold the lease of token {token}, so it does not call \
                 Apple for it; submit through the holder ({})",
                holder.as_deref().unwrap_or("none right now; retry shortly")
            ),
        ));
    }
    let body: Value = serde_json::from_slice(&body)
        .map_err(|e| HttpError::bad_request(format!("the {kind} request is not JSON: {e}")))?;
    if !body.is_object() {
        return Err(HttpError::bad_request(format!(
            "the {kind} request must be a JSON object as Apple expects"
        )));
    }
    // Before Service Config is read, empty limits make split_request use Apple's examples.
    let limits = apple.limits().unwrap_or_else(Limits::default);
    let chunks =
        split_request(kind, &body, &limits).map_err(|e| HttpError::bad_request(e.to_string()))?;
    // Detached from the request: if the caller hangs up mid-way, the chunks Apple already
    // accepted must still be tracked (dropping this future between Apple's answer and the
    // commit would lose an eventId).
    let task = tokio::spawn(submit_chunks(state, apple, token, kind, chunks));
    task.await.map_err(|e| {
        HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the {kind} submission stopped unexpectedly: {e}"),
        )
    })
}

/// Submits each chunk in order and tracks each eventId Apple returns.
async fn submit_chunks(
    state: ApiState,
    apple: crate::apple::AppleClient,
    token: String,
    kind: RequestKind,
    chunks: Vec<Value>,
) -> Response {
    let event_type = kind.event_type().as_str();
    let mut event_ids: Vec<String> = Vec::with_capacity(chunks.len());
    let mut events: Vec<EventView> = Vec::with_capacity(chunks.len());
    for (i, chunk) in chunks.iter().enumerate() {
        let answer = match apple.submit(&token, kind, chunk).await {
            Ok(answer) => answer,
            Err(e) => return submit_failed(&token, kind, i, chunks.len(), &e, event_ids, events),
        };
        if let Some(expires) = answer.token_expiration_date {
            state.metrics.set_token_expiry(&token, expires);
        }
        let event_id = answer.event_id;
        // Apple has the request now: whatever happens next, the caller must learn this id.
        event_ids.push(event_id.clone());
        let submitted_at = Timestamp::now().to_rfc3339();
        let fields = TrackFields {
            token: &token,
            event_id: &event_id,
            event_type,
            submitted_at: Some(&submitted_at),
            request: Some(chunk),
        };
        let tracked = match validate_track(
            Timestamp::now(),
            &fields,
            |t| state.tokens.contains(t),
            &state.timings,
        ) {
            Ok(valid) => commit_track(&state, valid).await,
            // The body was checked already, so what fails here is Apple's answer (an odd
            // eventId) or a reload that removed the token meanwhile: not the caller's fault.
            Err(e) => Err(HttpError {
                status: StatusCode::BAD_GATEWAY,
                ..e
            }),
        };
        match tracked {
            Ok((_, view)) => events.push(view),
            Err(e) => {
                tracing::error!(token = %token, event_id = %event_id, error = %e.message,
                    "Apple accepted a request but its event could not be tracked");
                let tracked: Vec<&str> = events.iter().map(|v| v.event_id.as_str()).collect();
                return (
                    e.status,
                    Json(json!({
                        "error": format!(
                            "Apple accepted {kind} request {} of {} as event {event_id}, but it could not be tracked: {}",
                            i + 1, chunks.len(), e.message
                        ),
                        "code": "not_tracked",
                        "eventIds": event_ids,
                        "untracked": [event_id],
                        "tracked": tracked,
                    })),
                )
                    .into_response();
            }
        }
    }
    (
        StatusCode::CREATED,
        Json(json!({"eventIds": event_ids, "events": events})),
    )
        .into_response()
}

/// 502 for a chunk Apple did not accept (or that never reached it); the chunks before it
/// stay submitted and tracked, and their eventIds are in the answer.
fn submit_failed(
    token: &str,
    kind: RequestKind,
    index: usize,
    total: usize,
    error: &ApiError,
    event_ids: Vec<String>,
    events: Vec<EventView>,
) -> Response {
    tracing::warn!(token = %token, kind = %kind, chunk = index + 1, chunks = total,
        submitted = event_ids.len(), error = %error, "Apple did not accept a request");
    let mut body = json!({
        "error": format!(
            "Apple did not accept {kind} request {} of {total} for token {token:?}: {error}",
            index + 1
        ),
        "code": "apple_error",
        "eventIds": event_ids,
        "events": events,
    });
    if let Some(n) = error.error_number() {
        body["errorNumber"] = json!(n);
    }
    (StatusCode::BAD_GATEWAY, Json(body)).into_response()
}
