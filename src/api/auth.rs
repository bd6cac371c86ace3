//! The optional bearer token of the local API, checked once as a layer over every route but
//! `/healthz` and `/metrics` (see [`super::router`]).

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::{ApiState, HttpError};

/// Middleware: 401 `unauthorized` unless the request carries the configured bearer token
/// (compared in constant time); passes everything when no token is configured.
pub(super) async fn require_bearer(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Result<Response, HttpError> {
    authorize(&state, request.headers())?;
    Ok(next.run(request).await)
}

/// Checks the optional bearer token of the local API, in constant time.
fn authorize(state: &ApiState, headers: &HeaderMap) -> Result<(), HttpError> {
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
