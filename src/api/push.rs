//! The push outbox and the licence report (README "Using it"): `POST /v1/push/replay` re-queues
//! changes for delivery; `GET /v1/push` shows the outbox; `GET /v1/tokens/{token}/licences`
//! is the licence report of one token, computed from the store only.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::validate::known_token;
use super::{ApiState, HttpError};
use crate::store::ReplayRefused;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    after: i64,
}

pub(super) async fn replay(
    State(state): State<ApiState>,
    body: Bytes,
) -> Result<Response, HttpError> {
    let body: ReplayBody = serde_json::from_slice(&body).map_err(|e| {
        HttpError::bad_request(format!(
            "invalid replay request (expected {{\"after\": SEQ}}): {e}"
        ))
    })?;
    if body.after < 0 {
        return Err(HttpError::bad_request(format!(
            "after {} must be 0 or more",
            body.after
        )));
    }
    let after = body.after;
    let r = state.store.push_replay(after).await?;
    match r {
        Ok(replays) => {
            tracing::info!(after, replays, "push: changes after {after} re-queued for delivery");
            Ok(Json(json!({"after": after, "replays": replays})).into_response())
        }
        Err(ReplayRefused::PastCursor { delivered }) => Err(HttpError::new(
            StatusCode::CONFLICT,
            "past_cursor",
            format!(
                "after {after} is past the last delivered seq {delivered}; a replay only re-queues delivered changes"
            ),
        )),
    }
}

pub(super) async fn status(State(state): State<ApiState>) -> Result<Response, HttpError> {
    let s = state.store.push_status().await?;
    Ok(Json(s).into_response())
}

pub(super) async fn licences(
    State(state): State<ApiState>,
    Path(token): Path<String>,
) -> Result<Response, HttpError> {
    known_token(&state, &token)?;
    let assets = state.store.licence_report(Some(token.clone())).await?;
    Ok(Json(json!({"token": token, "assets": assets})).into_response())
}
