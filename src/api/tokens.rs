//! Tokens, their leases and their mirror: `GET /v1/tokens` and `GET /v1/tokens/{token}/{assets,
//! assignments,users}`.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use serde_json::json;

use super::validate::{known_token, page_query, parse_cursor, parse_limit, PageQuery};
use super::{ApiState, HttpError};
use crate::store::MirrorKind;

/// Every token the store knows, each with its lease (`holder` and `leaseExpiresAt`, both
/// `null` unless an instance holds an unexpired lease on it).
pub(super) async fn list_tokens(State(state): State<ApiState>) -> Result<Response, HttpError> {
    let tokens = state.store.list_tokens().await?;
    let snapshot = state.store.lease_snapshot(state.lease_ttl()).await?;
    let holders = crate::cluster::view::holders(&snapshot);
    let tokens = crate::cluster::view::tokens_with_leases(&tokens, &holders);
    Ok(Json(json!({ "tokens": tokens })).into_response())
}

async fn mirror_page(
    state: ApiState,
    token: String,
    q: Result<Query<PageQuery>, QueryRejection>,
    what: MirrorKind,
) -> Result<Response, HttpError> {
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
    let items = state.store.list_mirror(&token, what, limit, offset).await?;
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
pub(super) fn mirror_route(what: MirrorKind) -> axum::routing::MethodRouter<ApiState> {
    get(
        move |State(state): State<ApiState>,
              Path(token): Path<String>,
              q: Result<Query<PageQuery>, QueryRejection>| {
            mirror_page(state, token, q, what)
        },
    )
}
