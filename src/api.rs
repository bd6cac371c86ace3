//! The local HTTP API (design §5): JSON in and out, camelCase like Apple's, errors as
//! `{"error", "code"}`. Handlers validate, talk to the store and hand inputs to the executor;
//! they hold no business logic and read no clock beyond stamping what they receive.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::apple::model::{count_entities, RequestKind};
use crate::core::{EventRecord, EventType, Outcome, State as EventState, Timings, TrackRequest};
use crate::executor::{ExecutorHandle, Input};
use crate::secret::Secret;
use crate::store::queries::{self, EventFilter, EventView, TrackOutcome};
use crate::store::{Store, StoreError};
use crate::time::Timestamp;

/// Shared state of the API handlers.
#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    pub executor: ExecutorHandle,
    /// Configured token names; replaced on reload.
    pub tokens: Arc<RwLock<HashSet<String>>>,
    pub timings: Timings,
    pub api_token: Option<Secret>,
    /// Bounds requests that wait on a commit (and so the executor's `committed` channel).
    pub writes: Arc<Semaphore>,
    /// The Apple client, for submitting requests through the daemon.
    pub apple: Option<crate::apple::AppleClient>,
}

/// An API error: status, machine code and one sentence.
#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl HttpError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> HttpError {
        HttpError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    pub fn not_found(message: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl From<StoreError> for HttpError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store error in the local API");
        HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            e.to_string(),
        )
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": self.message, "code": self.code})),
        )
            .into_response()
    }
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/events", post(track).get(list_events))
        .route("/v1/events/{event_id}", get(get_event))
        .route("/healthz", get(healthz))
        .with_state(state)
}

/// Checks the optional bearer token of the local API, in constant time.
pub fn authorize(state: &ApiState, headers: &HeaderMap) -> Result<(), HttpError> {
    let Some(expected) = &state.api_token else {
        return Ok(());
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if expected.matches(given.as_bytes()) {
        Ok(())
    } else {
        Err(HttpError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token for the local API",
        ))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TrackBody {
    token: String,
    event_id: String,
    #[serde(rename = "type")]
    event_type: String,
    submitted_at: Option<String>,
    request: Option<Value>,
}

/// Validates an eventId: Apple's are UUIDs; accept any short printable id without spaces.
pub fn validate_event_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "eventId {:?} must be 1 to 128 printable characters without spaces",
            truncate(id, 140)
        ));
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// What the tracker passed, validated: the record to insert and the body to keep.
pub struct ValidTrack {
    pub record: EventRecord,
    pub request: Option<String>,
}

/// A track request as received (API body or CLI arguments).
#[derive(Debug, Default)]
pub struct TrackFields<'a> {
    pub token: &'a str,
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub submitted_at: Option<&'a str>,
    pub request: Option<&'a Value>,
}

/// Validates a track request against the configured tokens (pure apart from `now`).
pub fn validate_track(
    now: Timestamp,
    fields: &TrackFields<'_>,
    tokens: &HashSet<String>,
    timings: &Timings,
) -> Result<ValidTrack, HttpError> {
    let TrackFields {
        token,
        event_id,
        event_type,
        submitted_at,
        request,
    } = *fields;
    validate_event_id(event_id).map_err(HttpError::bad_request)?;
    let event_type: EventType = event_type.parse().map_err(HttpError::bad_request)?;
    if !tokens.contains(token) {
        return Err(HttpError::new(
            StatusCode::NOT_FOUND,
            "unknown_token",
            format!("token {:?} is not configured", truncate(token, 64)),
        ));
    }
    let submitted_at = match submitted_at {
        None => None,
        Some(s) => Some(Timestamp::parse_rfc3339(s).ok_or_else(|| {
            HttpError::bad_request(format!(
                "submittedAt {:?} is not an RFC 3339 time",
                truncate(s, 64)
            ))
        })?),
    };
    if let Some(body) = request {
        if !body.is_object() {
            return Err(HttpError::bad_request(
                "request must be the JSON object sent to Apple",
            ));
        }
    }
    let num_requested =
        request.and_then(|b| count_entities(RequestKind::for_event_type(event_type), b));
    let record = EventRecord::new_tracked(
        now,
        TrackRequest {
            event_id: event_id.to_string(),
            token: token.to_string(),
            event_type,
            submitted_at,
            num_requested,
            has_request: request.is_some(),
            supersedes: None,
        },
        timings,
    );
    Ok(ValidTrack {
        record,
        request: request.map(|b| b.to_string()),
    })
}

/// Commits a tracked event (idempotently) and hands it to the executor in commit order.
/// Returns the status (201 new, 200 already tracked) and the event's view.
pub async fn commit_track(
    state: &ApiState,
    valid: ValidTrack,
) -> Result<(StatusCode, EventView), HttpError> {
    let _permit = state.writes.acquire().await.map_err(|_| {
        HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "shutting down",
        )
    })?;
    let record = valid.record.clone();
    let committed = state.executor.committed.clone();
    let hook_record = record.clone();
    let outcome = state
        .store
        .write_then(
            move |conn| queries::insert_tracked(conn, &record, valid.request.as_deref(), "tracked"),
            move |outcome| {
                if let TrackOutcome::Created(notes) = outcome {
                    let _ = committed.send(Input::Tracked {
                        record: hook_record,
                        notes: notes.clone(),
                    });
                }
            },
        )
        .await?;
    match outcome {
        TrackOutcome::Created(_) => Ok((
            StatusCode::CREATED,
            EventView::from_record(valid.record, vec![]),
        )),
        TrackOutcome::Exists { token, event_type } => {
            if token == valid.record.token && event_type == valid.record.event_type {
                let id = valid.record.event_id.clone();
                let view = state
                    .store
                    .read(move |c| queries::list_event_view(c, &id))
                    .await?
                    .ok_or_else(|| HttpError::not_found("event vanished"))?;
                Ok((StatusCode::OK, view))
            } else {
                Err(HttpError::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    format!(
                        "event {} is already tracked with token {token:?} and type {event_type}",
                        valid.record.event_id
                    ),
                ))
            }
        }
    }
}

async fn track(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, HttpError> {
    authorize(&state, &headers)?;
    let body: TrackBody = serde_json::from_slice(&body)
        .map_err(|e| HttpError::bad_request(format!("invalid track request: {e}")))?;
    let tokens = state.tokens.read().map(|t| t.clone()).unwrap_or_default();
    let fields = TrackFields {
        token: &body.token,
        event_id: &body.event_id,
        event_type: &body.event_type,
        submitted_at: body.submitted_at.as_deref(),
        request: body.request.as_ref(),
    };
    let valid = validate_track(Timestamp::now(), &fields, &tokens, &state.timings)?;
    let (status, view) = commit_track(&state, valid).await?;
    Ok((status, Json(view)).into_response())
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    pub state: Option<String>,
    pub outcome: Option<String>,
    pub token: Option<String>,
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

impl ListQuery {
    pub fn to_filter(&self) -> Result<EventFilter, String> {
        Ok(EventFilter {
            state: self
                .state
                .as_deref()
                .map(str::parse::<EventState>)
                .transpose()?,
            outcome: self
                .outcome
                .as_deref()
                .map(str::parse::<Outcome>)
                .transpose()?,
            token: self.token.clone(),
            event_type: self
                .event_type
                .as_deref()
                .map(str::parse::<EventType>)
                .transpose()?,
            limit: self.limit.unwrap_or(100),
            cursor: self.cursor.clone(),
        })
    }
}

async fn list_events(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Response, HttpError> {
    authorize(&state, &headers)?;
    let filter = q.to_filter().map_err(HttpError::bad_request)?;
    let (events, next) = state
        .store
        .read(move |c| queries::list_events(c, &filter))
        .await
        .map_err(|e| match e {
            StoreError::NotFound(what) => HttpError::bad_request(format!("unknown {what}")),
            other => other.into(),
        })?;
    let mut body = json!({ "events": events });
    if let Some(n) = next {
        body["nextCursor"] = json!(n);
    }
    Ok(Json(body).into_response())
}

async fn get_event(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(event_id): Path<String>,
) -> Result<Response, HttpError> {
    authorize(&state, &headers)?;
    let id = event_id.clone();
    let detail = state
        .store
        .read(move |c| queries::event_detail(c, &id))
        .await?
        .ok_or_else(|| {
            HttpError::not_found(format!(
                "event {:?} is not tracked",
                truncate(&event_id, 140)
            ))
        })?;
    Ok(Json(detail).into_response())
}

async fn healthz(State(state): State<ApiState>) -> Response {
    let db = tokio::time::timeout(Duration::from_secs(5), state.store.ping()).await;
    let alive = state
        .executor
        .alive(Timestamp::now(), Duration::from_secs(30));
    match (db, alive) {
        (Ok(Ok(())), true) => (StatusCode::OK, Json(json!({"status": "ok"}))).into_response(),
        (db, alive) => {
            let why = match db {
                Ok(Ok(())) => String::new(),
                Ok(Err(e)) => format!("database: {e}"),
                Err(_) => "database: no commit within 5s".into(),
            };
            let why = if alive {
                why
            } else {
                format!("{why} executor loop stalled").trim().to_string()
            };
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unhealthy", "error": why})),
            )
                .into_response()
        }
    }
}
