//! Sync runs: `POST /v1/tokens/{token}/sync` asks the scheduler for one, `GET /v1/syncs`
//! lists them.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::validate::{known_token, page_query, parse_cursor, parse_limit, PageQuery};
use super::{ApiState, HttpError};
use crate::core::SyncKind;
use crate::executor::Input;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SyncBody {
    kind: String,
    #[serde(default)]
    full: bool,
}

/// How long a sync request waits for the executor's ticket.
const SYNC_REPLY_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) async fn request_sync(
    State(state): State<ApiState>,
    Path(token): Path<String>,
    body: Bytes,
) -> Result<Response, HttpError> {
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

pub(super) async fn list_syncs(
    State(state): State<ApiState>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Response, HttpError> {
    let q = page_query(q)?;
    let limit = parse_limit(q.limit.as_deref(), 20, 1000)?;
    let before = q
        .cursor
        .as_deref()
        .map(|c| parse_cursor("cursor", c))
        .transpose()?;
    let token = q.token.clone();
    let syncs = state.store.list_syncs_page(token, before, limit).await?;
    let mut body = json!({ "syncs": syncs });
    if syncs.len() == limit as usize {
        if let Some(last) = syncs.last() {
            body["nextCursor"] = json!(last.id.to_string());
        }
    }
    Ok(Json(body).into_response())
}
