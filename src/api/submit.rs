//! Submitting through the daemon: `POST /v1/tokens/{token}/requests/{kind}` splits the
//! request within Apple's limits, submits each chunk and tracks each eventId Apple returns.
//!
//! Bounded (README, "Local HTTP API"): a body over [`MAX_SUBMIT_BODY_BYTES`] (the read stops
//! there), or one that would make more than
//! [`MAX_SUBMIT_REQUESTS`](crate::apple::model::MAX_SUBMIT_REQUESTS) (100) Apple requests or
//! name more than [`MAX_SUBMIT_ENTITIES`](crate::apple::model::MAX_SUBMIT_ENTITIES) (100,000)
//! entities, is refused with 413 `too_large` before any
//! request reaches Apple; the chunks are cut from the body one at a time as they are sent.
//!
//! Idempotent with an `Idempotency-Key` header (1 to [`MAX_IDEMPOTENCY_KEY_LEN`] printable
//! ASCII characters): the first submission with a key for a (token, kind) claims it in the
//! store before calling Apple and records its answer there when it ends; a retry with the
//! same key and body gets that answer again (status and eventIds, header
//! `Idempotent-Replayed: true`) and spends nothing, also after a restart; the same key with
//! another body is refused (422 `idempotency_mismatch`), and one whose first submission is
//! still running (or was cut off by a crash) gets 409 `idempotency_in_progress`. A first
//! submission that Apple accepted no part of releases its key, so a retry really retries.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::events::commit_track;
use super::validate::{known_token, truncate, validate_track, TrackFields};
use super::{ApiState, HttpError};
use crate::apple::model::{split_request, Limits, RequestKind, Split};
use crate::apple::ApiError;
use crate::store::{EventView, SubmissionClaim};
use crate::time::Timestamp;
use crate::webhook::{read_capped, BodyError};

/// Largest submission body accepted (1 MiB): more than 100 requests'
/// worth of ids for any kind at Apple's example limits.
pub const MAX_SUBMIT_BODY_BYTES: usize = 1024 * 1024;
/// Longest `Idempotency-Key` accepted.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// The `Idempotency-Key` header, if any: 1 to [`MAX_IDEMPOTENCY_KEY_LEN`] printable ASCII
/// characters without spaces.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, HttpError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = v.to_str().unwrap_or_default();
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY_LEN
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(HttpError::bad_request(format!(
            "Idempotency-Key {:?} must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters without spaces",
            truncate(&String::from_utf8_lossy(v.as_bytes()), 140)
        )));
    }
    Ok(Some(key.to_string()))
}

/// What a key is bound to: the body as parsed (so formatting and key order do not matter).
fn body_hash(body: &Value) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(body.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn too_large(message: String) -> HttpError {
    HttpError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
}

pub(super) async fn submit_request(
    State(state): State<ApiState>,
    Path((token, kind)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let kind: RequestKind = kind.parse().map_err(HttpError::bad_request)?;
    known_token(&state, &token)?;
    let key = idempotency_key(&headers)?;
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
    let body = match read_capped(&headers, body, MAX_SUBMIT_BODY_BYTES).await {
        Ok(b) => b,
        Err(BodyError::TooLarge { max }) => {
            return Err(too_large(format!(
                "the {kind} request body{} is over the limit of {max} bytes per submission; \
                 split it into smaller submissions",
                headers
                    .get(axum::http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .map(|n| format!(" of {} bytes", truncate(n, 20)))
                    .unwrap_or_default()
            )))
        }
        Err(e) => return Err(HttpError::bad_request(e.to_string())),
    };
    let body: Value = serde_json::from_slice(&body)
        .map_err(|e| HttpError::bad_request(format!("the {kind} request is not JSON: {e}")))?;
    if !body.is_object() {
        return Err(HttpError::bad_request(format!(
            "the {kind} request must be a JSON object as Apple expects"
        )));
    }
    // Before Service Config is read, empty limits make split_request use Apple's examples.
    let limits = apple.limits().unwrap_or_else(Limits::default);
    let split =
        split_request(kind, &body, &limits).map_err(|e| HttpError::bad_request(e.to_string()))?;
    split.within_caps().map_err(|e| too_large(e.to_string()))?;
    if let Some(key) = &key {
        let claim = state
            .store
            .claim_submission(
                &token,
                kind.as_str(),
                key,
                &body_hash(&body),
                Timestamp::now(),
            )
            .await?;
        drop(body);
        match claim {
            SubmissionClaim::Claimed => {}
            SubmissionClaim::Done { status, answer } => return Ok(replayed(status, &answer)),
            SubmissionClaim::Running { since } => {
                return Err(HttpError::new(
                    StatusCode::CONFLICT,
                    "idempotency_in_progress",
                    format!(
                        "the {kind} submission with Idempotency-Key {key:?} for token {token} \
                         is still in progress (started {}), or was cut off when the daemon \
                         stopped; the events it submitted are tracked (GET /v1/events)",
                        since.to_rfc3339()
                    ),
                ))
            }
            SubmissionClaim::Mismatch => {
                return Err(HttpError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_mismatch",
                    format!(
                        "Idempotency-Key {key:?} was used for another {kind} body for token \
                         {token}; use a new key for a new submission"
                    ),
                ))
            }
        }
    }
    // Detached from the request: if the caller hangs up mid-way, the chunks Apple already
    // accepted must still be tracked (dropping this future between Apple's answer and the
    // commit would lose an eventId), and the key's answer recorded.
    let task = tokio::spawn(async move {
        let (status, answer, submitted) = submit_chunks(&state, apple, &token, kind, split).await;
        if let Some(key) = key {
            remember(&state, &token, kind, &key, status, &answer, submitted).await;
        }
        (status, Json(answer)).into_response()
    });
    task.await.map_err(|e| {
        HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the {kind} submission stopped unexpectedly: {e}"),
        )
    })
}

/// The stored answer of the first submission with a key.
fn replayed(status: u16, answer: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let body: Value = serde_json::from_str(answer).unwrap_or(Value::Null);
    let mut r = (status, Json(body)).into_response();
    r.headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    r
}

/// Records the answer of a keyed submission, or releases the key when Apple took no part of
/// it (a retry then submits for real).
async fn remember(
    state: &ApiState,
    token: &str,
    kind: RequestKind,
    key: &str,
    status: StatusCode,
    answer: &Value,
    submitted: usize,
) {
    let written = if submitted == 0 {
        state
            .store
            .release_submission(token, kind.as_str(), key)
            .await
    } else {
        state
            .store
            .finish_submission(
                token,
                kind.as_str(),
                key,
                status.as_u16(),
                &answer.to_string(),
                Timestamp::now(),
            )
            .await
    };
    if let Err(e) = written {
        tracing::error!(token = %token, kind = %kind, error = %e,
            "cannot record the answer of a submission with an Idempotency-Key; a retry with it answers 409");
    }
}

/// Submits each chunk in order (each cut from the split when its turn comes) and tracks each
/// eventId Apple returns. Returns the answer and how many chunks Apple accepted.
async fn submit_chunks(
    state: &ApiState,
    apple: crate::apple::AppleClient,
    token: &str,
    kind: RequestKind,
    chunks: Split,
) -> (StatusCode, Value, usize) {
    let token = token.to_string();
    let event_type = kind.event_type().as_str();
    let mut event_ids: Vec<String> = Vec::with_capacity(chunks.len());
    let mut events: Vec<EventView> = Vec::with_capacity(chunks.len());
    for (i, chunk) in chunks.iter().enumerate() {
        let chunk = &chunk;
        let answer = match apple.submit(&token, kind, chunk).await {
            Ok(answer) => answer,
            Err(e) => {
                let n = event_ids.len();
                let (status, body) =
                    submit_failed(&token, kind, i, chunks.len(), &e, event_ids, events);
                return (status, body, n);
            }
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
            Ok(valid) => commit_track(state, valid).await,
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
                let n = event_ids.len();
                return (
                    e.status,
                    json!({
                        "error": format!(
                            "Apple accepted {kind} request {} of {} as event {event_id}, but it could not be tracked: {}",
                            i + 1, chunks.len(), e.message
                        ),
                        "code": "not_tracked",
                        "eventIds": event_ids,
                        "untracked": [event_id],
                        "tracked": tracked,
                    }),
                    n,
                );
            }
        }
    }
    let n = event_ids.len();
    (
        StatusCode::CREATED,
        json!({"eventIds": event_ids, "events": events}),
        n,
    )
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
) -> (StatusCode, Value) {
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
    (StatusCode::BAD_GATEWAY, body)
}
