//! Tracking and reading events: `POST /v1/events`, `GET /v1/events`,
//! `GET /v1/events/{event_id}`.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::validate::{truncate, validate_track, ListQuery, TrackFields, ValidTrack};
use super::{ApiState, HttpError};
use crate::core::EventType;
use crate::executor::TrackReply;
use crate::store::EventView;
use crate::store::StoreError;
use crate::time::Timestamp;

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
    let stored = state.store.get_event(&id).await?;
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
            let view = state
                .store
                .event_view(&rec.event_id)
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

pub(super) async fn track(
    State(state): State<ApiState>,
    body: Bytes,
) -> Result<Response, HttpError> {
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

pub(super) async fn list_events(
    State(state): State<ApiState>,
    Query(q): Query<ListQuery>,
) -> Result<Response, HttpError> {
    let filter = q.to_filter().map_err(HttpError::bad_request)?;
    let (events, next) = state.store.list_events(filter).await.map_err(|e| match e {
        StoreError::NotFound(what) => HttpError::bad_request(format!("unknown {what}")),
        other => other.into(),
    })?;
    let mut body = json!({ "events": events });
    if let Some(n) = next {
        body["nextCursor"] = json!(n);
    }
    Ok(Json(body).into_response())
}

pub(super) async fn get_event(
    State(state): State<ApiState>,
    Path(event_id): Path<String>,
) -> Result<Response, HttpError> {
    let detail = state.store.event_detail(&event_id).await?.ok_or_else(|| {
        HttpError::not_found(format!(
            "event {:?} is not tracked",
            truncate(&event_id, 140)
        ))
    })?;
    Ok(Json(detail).into_response())
}
