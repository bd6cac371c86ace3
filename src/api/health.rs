//! `GET /healthz` and `GET /metrics`, both unauthenticated.

use std::collections::HashSet;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{ApiState, HttpError};
use crate::time::Timestamp;

pub(super) async fn healthz(State(state): State<ApiState>) -> Response {
    let db = tokio::time::timeout(Duration::from_secs(5), state.store.ping()).await;
    let alive = state
        .executor
        .alive(Timestamp::now(), Duration::from_secs(30));
    match (db, alive) {
        (Ok(Ok(())), true) => {
            let configured = state.tokens.names();
            let unhealthy = state.store.unhealthy_tokens().await.unwrap_or_default();
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

/// Prometheus text; unauthenticated like `/healthz` (scrapers rarely carry bearer tokens and
/// nothing here is secret: token names only).
pub(super) async fn metrics(State(state): State<ApiState>) -> Response {
    let configured: HashSet<String> = state.tokens.names().into_iter().collect();
    let snapshot = state.store.store_stats(configured).await;
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
