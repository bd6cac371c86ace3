//! The changes feed: `GET /v1/changes`, events whose state or outcome changed, in commit
//! order.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::validate::{page_query, parse_cursor, parse_limit, truncate, PageQuery};
use super::{ApiState, HttpError};

pub(super) async fn list_changes(
    State(state): State<ApiState>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Response, HttpError> {
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
    let changes = state.store.changes_after(after, limit).await?;
    let mut body = json!({ "changes": changes });
    if changes.len() == limit as usize {
        if let Some(last) = changes.last() {
            body["nextCursor"] = json!(last.seq.to_string());
        }
    }
    Ok(Json(body).into_response())
}
