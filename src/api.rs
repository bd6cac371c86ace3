//! The local HTTP API (design §5): JSON in and out, camelCase like Apple's, errors as
//! `{"error", "code"}`. Handlers validate, talk to the store and hand inputs to the executor;
//! they hold no business logic and read no clock beyond stamping what they receive.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::apple::model::{count_entities, split_request, Limits, RequestKind};
use crate::apple::ApiError;
use crate::core::{
    EventRecord, EventType, Outcome, State as EventState, SyncKind, Timings, TrackRequest,
};
use crate::executor::{ExecutorHandle, Input, TrackReply};
use crate::secret::Secret;
use crate::store::mirror::{self, MirrorKind};
use crate::store::queries::{self, EventFilter, EventView};
use crate::store::{Store, StoreError};
use crate::time::Timestamp;
use crate::tokens::Registry;

/// Shared state of the API handlers.
#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    pub executor: ExecutorHandle,
    /// The configured tokens (replaced on reload).
    pub tokens: Registry,
    pub timings: Timings,
    pub api_token: Option<Secret>,
    /// Bounds track requests waiting on the executor.
    pub writes: Arc<Semaphore>,
    /// The Apple client, for submitting requests through the daemon.
    pub apple: Option<crate::apple::AppleClient>,
    /// Recorded into by the handlers and rendered on `/metrics`.
    pub metrics: crate::metrics::Metrics,
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
        .route("/v1/changes", get(list_changes))
        .route("/v1/tokens", get(list_tokens))
        .route("/v1/tokens/{token}/requests/{kind}", post(submit_request))
        .route("/v1/tokens/{token}/sync", post(request_sync))
        .route(
            "/v1/tokens/{token}/assets",
            mirror_route(MirrorKind::Assets),
        )
        .route(
            "/v1/tokens/{token}/assignments",
            mirror_route(MirrorKind::Assignments),
        )
        .route("/v1/tokens/{token}/users", mirror_route(MirrorKind::Users))
        .route("/v1/syncs", get(list_syncs))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
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
        .and_then(crate::secret::bearer)
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
    is_token: impl Fn(&str) -> bool,
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
    if !is_token(token) {
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

/// Tracks an event through the executor (the one path that writes events) and answers once
/// it is committed: 201 new, 200 already tracked with the same token and type, 409 otherwise.
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
    let id = valid.record.event_id.clone();
    // Settled events have left the core's memory: the store answers for them.
    let stored = state
        .store
        .read(move |c| queries::get_event(c, &id))
        .await?;
    let reply = match stored {
        Some(rec) => TrackReply::Existing(rec),
        None => {
            state
                .executor
                .track(valid.record.clone(), valid.request)
                .await
        }
    };
    match reply {
        TrackReply::Created(rec) => Ok((StatusCode::CREATED, EventView::from_record(rec, vec![]))),
        TrackReply::Existing(rec)
            if rec.token == valid.record.token && rec.event_type == valid.record.event_type =>
        {
            let id = rec.event_id.clone();
            let view = state
                .store
                .read(move |c| queries::list_event_view(c, &id))
                .await?
                .unwrap_or_else(|| EventView::from_record(rec, vec![]));
            Ok((StatusCode::OK, view))
        }
        TrackReply::Existing(rec) => {
            Err(conflict(&valid.record.event_id, &rec.token, rec.event_type))
        }
        TrackReply::Conflict { token, event_type } => {
            Err(conflict(&valid.record.event_id, &token, event_type))
        }
        TrackReply::NotCommitted(why) => Err(HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            format!(
                "event {} could not be committed ({why}); try again",
                valid.record.event_id
            ),
        )),
    }
}

fn conflict(event_id: &str, token: &str, event_type: EventType) -> HttpError {
    HttpError::new(
        StatusCode::CONFLICT,
        "conflict",
        format!("event {event_id} is already tracked with token {token:?} and type {event_type}"),
    )
}

async fn track(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, HttpError> {
    authorize(&state, &headers)?;
    let body: TrackBody = serde_json::from_slice(&body)
        .map_err(|e| HttpError::bad_request(format!("invalid track request: {e}")))?;
    let fields = TrackFields {
        token: &body.token,
        event_id: &body.event_id,
        event_type: &body.event_type,
        submitted_at: body.submitted_at.as_deref(),
        request: body.request.as_ref(),
    };
    let valid = validate_track(
        Timestamp::now(),
        &fields,
        |t| state.tokens.contains(t),
        &state.timings,
    )?;
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
        (Ok(Ok(())), true) => {
            let configured = state.tokens.names();
            let unhealthy = state
                .store
                .read(queries::unhealthy_tokens)
                .await
                .unwrap_or_default();
            let tokens: serde_json::Map<String, Value> = unhealthy
                .into_iter()
                .filter(|t| configured.contains(&t.name))
                .map(|t| {
                    let name = t.name.clone();
                    (name, serde_json::to_value(t).unwrap_or(Value::Null))
                })
                .collect();
            if tokens.is_empty() {
                (StatusCode::OK, Json(json!({"status": "ok"}))).into_response()
            } else {
                (
                    StatusCode::OK,
                    Json(json!({"status": "degraded", "tokens": tokens})),
                )
                    .into_response()
            }
        }
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

// ---- routes beyond tracking: submit, feed, syncs, tokens, mirror, metrics ----

/// 404 `unknown_token` unless `token` is configured.
fn known_token(state: &ApiState, token: &str) -> Result<(), HttpError> {
    if state.tokens.contains(token) {
        Ok(())
    } else {
        Err(HttpError::new(
            StatusCode::NOT_FOUND,
            "unknown_token",
            format!("token {:?} is not configured", truncate(token, 64)),
        ))
    }
}

/// Query strings as received: numbers are parsed by hand so a bad one gets our JSON error.
#[derive(Deserialize, Default)]
pub struct PageQuery {
    pub after: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<String>,
    pub token: Option<String>,
}

fn page_query(q: Result<Query<PageQuery>, QueryRejection>) -> Result<PageQuery, HttpError> {
    q.map(|Query(q)| q)
        .map_err(|e| HttpError::bad_request(format!("invalid query string: {}", e.body_text())))
}

/// `limit` within 1..=`max` (larger values are clamped: a client asking for too much still
/// gets pages), `default` when absent.
fn parse_limit(raw: Option<&str>, default: u32, max: u32) -> Result<u32, HttpError> {
    match raw {
        None => Ok(default),
        Some(s) => match s.trim().parse::<u64>() {
            Ok(n) if n >= 1 => Ok(u32::try_from(n).unwrap_or(max).min(max)),
            _ => Err(HttpError::bad_request(format!(
                "limit {:?} must be a whole number from 1 to {max}",
                truncate(s, 32)
            ))),
        },
    }
}

fn parse_cursor(name: &str, raw: &str) -> Result<u64, HttpError> {
    raw.trim().parse::<u64>().map_err(|_| {
        HttpError::bad_request(format!(
            "{name} {:?} must be a cursor from a previous page (a whole number)",
            truncate(raw, 32)
        ))
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SyncBody {
    kind: String,
    #[serde(default)]
    full: bool,
}

/// How long a sync request waits for the executor's ticket.
const SYNC_REPLY_TIMEOUT: Duration = Duration::from_secs(5);

async fn request_sync(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(token): Path<String>,
    body: Bytes,
) -> Result<Response, HttpError> {
    authorize(&state, &headers)?;
    known_token(&state, &token)?;
    let body: SyncBody = serde_json::from_slice(&body)
        .map_err(|e| HttpError::bad_request(format!("invalid sync request: {e}")))?;
    let kind: SyncKind = body.kind.parse().map_err(HttpError::bad_request)?;
    let (reply, ticket) = tokio::sync::oneshot::channel();
    let input = Input::Sync {
        token: token.clone(),
        kind,
        full: body.full,
        cause: "requested through the local API".into(),
        reply: Some(reply),
    };
    let unavailable = || {
        HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "executor_unavailable",
            format!(
                "the scheduler did not take the {kind} sync request for token {token:?} within 5s"
            ),
        )
    };
    let ticket = tokio::time::timeout(SYNC_REPLY_TIMEOUT, async {
        state.executor.inputs.send(input).await.ok()?;
        ticket.await.ok()
    })
    .await
    .ok()
    .flatten()
    .ok_or_else(unavailable)?;
    Ok((StatusCode::ACCEPTED, Json(ticket)).into_response())
}

async fn submit_request(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((token, kind)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, HttpError> {
    authorize(&state, &headers)?;
    let kind: RequestKind = kind.parse().map_err(HttpError::bad_request)?;
    known_token(&state, &token)?;
    let Some(apple) = state.apple.clone() else {
        return Err(HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "apple_unavailable",
            "this daemon has no Apple client, so it cannot submit requests",
        ));
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

async fn list_changes(
    State(state): State<ApiState>,
    headers: HeaderMap,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Response, HttpError> {
    authorize(&state, &headers)?;
    let q = page_query(q)?;
    let limit = parse_limit(q.limit.as_deref(), 100, 1000)?;
    let after = match (q.after.as_deref(), q.cursor.as_deref()) {
        (Some(a), Some(c)) if a != c => {
            return Err(HttpError::bad_request(format!(
                "after {:?} and cursor {:?} disagree; give one of them",
                truncate(a, 32),
                truncate(c, 32)
            )))
        }
        (Some(a), _) => parse_cursor("after", a)?,
        (None, Some(c)) => parse_cursor("cursor", c)?,
        (None, None) => 0,
    };
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let changes = state
        .store
        .read(move |c| queries::changes_after(c, after, limit))
        .await?;
    let mut body = json!({ "changes": changes });
    if changes.len() == limit as usize {
        if let Some(last) = changes.last() {
            body["nextCursor"] = json!(last.seq.to_string());
        }
    }
    Ok(Json(body).into_response())
}

async fn list_syncs(
    State(state): State<ApiState>,
    headers: HeaderMap,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Response, HttpError> {
    authorize(&state, &headers)?;
    let q = page_query(q)?;
    let limit = parse_limit(q.limit.as_deref(), 20, 1000)?;
    let before = q
        .cursor
        .as_deref()
        .map(|c| parse_cursor("cursor", c))
        .transpose()?;
    let token = q.token.clone();
    let syncs = state
        .store
        .read(move |c| queries::list_syncs_page(c, token.as_deref(), before, limit))
        .await?;
    let mut body = json!({ "syncs": syncs });
    if syncs.len() == limit as usize {
        if let Some(last) = syncs.last() {
            body["nextCursor"] = json!(last.id.to_string());
        }
    }
    Ok(Json(body).into_response())
}

async fn list_tokens(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    authorize(&state, &headers)?;
    let tokens = state.store.read(queries::list_tokens).await?;
    Ok(Json(json!({ "tokens": tokens })).into_response())
}

async fn mirror_page(
    state: ApiState,
    headers: HeaderMap,
    token: String,
    q: Result<Query<PageQuery>, QueryRejection>,
    what: MirrorKind,
) -> Result<Response, HttpError> {
    authorize(&state, &headers)?;
    known_token(&state, &token)?;
    let q = page_query(q)?;
    let limit = parse_limit(q.limit.as_deref(), 1000, 10_000)?;
    let offset = q
        .cursor
        .as_deref()
        .map(|c| parse_cursor("cursor", c))
        .transpose()?
        .unwrap_or(0)
        // SQLite offsets are i64; anything past that is simply beyond the end.
        .min(i64::MAX as u64);
    let items = state
        .store
        .read(move |c| mirror::list(c, &token, what, limit, offset))
        .await?;
    let key = match what {
        MirrorKind::Assets => "assets",
        MirrorKind::Assignments => "assignments",
        MirrorKind::Users => "users",
    };
    let mut body = json!({ key: items });
    if items.len() == limit as usize {
        body["nextCursor"] = json!((offset + items.len() as u64).to_string());
    }
    Ok(Json(body).into_response())
}

/// `GET /v1/tokens/{token}/<what>`: one handler for the three mirror reads.
fn mirror_route(what: MirrorKind) -> axum::routing::MethodRouter<ApiState> {
    get(
        move |State(state): State<ApiState>,
              headers: HeaderMap,
              Path(token): Path<String>,
              q: Result<Query<PageQuery>, QueryRejection>| {
            mirror_page(state, headers, token, q, what)
        },
    )
}

/// Prometheus text; unauthenticated like `/healthz` (scrapers rarely carry bearer tokens and
/// nothing here is secret: token names only).
async fn metrics(State(state): State<ApiState>) -> Response {
    let configured: HashSet<String> = state.tokens.names().into_iter().collect();
    let snapshot = state
        .store
        .read(move |c| crate::store::stats::store_stats(c, &configured))
        .await;
    match snapshot {
        Ok(snapshot) => (
            StatusCode::OK,
            [(
                axum::http::header::CONTENT_TYPE,
                crate::metrics::CONTENT_TYPE,
            )],
            state.metrics.render(&snapshot, Timestamp::now()),
        )
            .into_response(),
        Err(e) => HttpError::from(e).into_response(),
    }
}
