//! `GET /healthz` and `GET /metrics`, both without a token (the `Host` check still applies).
//!
//! `/healthz`: 200 `ok`; 200 `degraded` with `tokens` (tokens Apple refused, expired...)
//! and/or `store` (`{"writes":"failing","since":...,"error":...}` while the database takes
//! no writes, e.g. a full disk or a read-only PostgreSQL server; it clears by itself once a
//! write commits); 503 `unhealthy`
//! when the store's writer does not answer or the executor loop stalled.

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
            // The ping writes nothing (SQLite: an empty commit, which a full disk lets
            // through; PostgreSQL: a read, which a read-only server answers): the store's own
            // record of its write transactions says whether data can be written.
            let writes = state.store.writes_failing();
            if tokens.is_empty() && writes.is_none() {
                return (StatusCode::OK, Json(json!({"status": "ok"}))).into_response();
            }
            let mut body = serde_json::Map::new();
            body.insert("status".into(), "degraded".into());
            if !tokens.is_empty() {
                body.insert("tokens".into(), Value::Object(tokens));
            }
            if let Some(f) = writes {
                let mut store = serde_json::to_value(f).unwrap_or(Value::Null);
                if let Some(o) = store.as_object_mut() {
                    o.insert("writes".into(), "failing".into());
                }
                body.insert("store".into(), store);
            }
            (StatusCode::OK, Json(Value::Object(body))).into_response()
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

/// How long a scrape waits for the lease snapshot before leaving the cluster's series out.
const LEASE_READ_LIMIT: Duration = Duration::from_secs(1);

/// Prometheus text; unauthenticated like `/healthz` (scrapers rarely carry bearer tokens and
/// nothing here is secret: token and instance names only).
pub(super) async fn metrics(State(state): State<ApiState>) -> Response {
    let names = state.tokens.names();
    let configured: HashSet<String> = names.iter().cloned().collect();
    let snapshot = match state.store.store_stats(configured).await {
        Ok(snapshot) => snapshot,
        Err(e) => return HttpError::from(e).into_response(),
    };
    // Among other instances: the lease series, read now, bounded; a failed or slow read
    // leaves them out rather than failing the scrape.
    let leases = match &state.cluster {
        None => None,
        Some(c) => {
            match tokio::time::timeout(LEASE_READ_LIMIT, state.store.lease_snapshot(c.lease_ttl))
                .await
            {
                Ok(Ok(leases)) => Some(leases),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "/metrics: lease snapshot failed; lease series left out");
                    None
                }
                Err(_) => {
                    tracing::warn!(
                        limit = ?LEASE_READ_LIMIT,
                        "/metrics: lease snapshot too slow; lease series left out"
                    );
                    None
                }
            }
        }
    };
    let gauges = match (&state.cluster, &leases) {
        (Some(c), Some(snapshot)) => Some(crate::metrics::LeaseGauges {
            me: &c.me,
            tokens: &names,
            snapshot,
        }),
        _ => None,
    };
    (
        StatusCode::OK,
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        state
            .metrics
            .render_with_leases(&snapshot, Timestamp::now(), gauges),
    )
        .into_response()
}
