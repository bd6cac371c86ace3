//! The local HTTP API (docs/architecture.md#local-http-api): JSON in and out, camelCase like
//! Apple's, errors as `{"error", "code"}`. Handlers validate, talk to the store and hand inputs
//! to the executor; they hold no business logic and read no clock beyond stamping what they
//! receive.
//!
//! One module per behaviour: [`access`] (who may: Host, token, Origin, Content-Type; pure),
//! [`auth`] (its layers), [`token_file`] (the API token's file), [`events`] (track, list,
//! get), [`submit`] (submitting through the daemon), [`feed`] (changes feed), [`syncs`],
//! [`tokens`] (tokens and mirror reads), [`instances`] (the cluster: instances and who holds
//! which token), [`health`] (`/healthz`, `/metrics`), [`status`] (the
//! HTML status page at `/`) and [`validate`] (input checks shared with the CLI).

pub mod access;
mod auth;
mod events;
mod feed;
mod health;
mod instances;
mod push;
mod status;
mod submit;
mod syncs;
pub mod token_file;
mod tokens;
mod validate;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::core::Timings;
use crate::executor::ExecutorHandle;
use crate::store::MirrorKind;
use crate::store::{Store, StoreError};
use crate::tokens::Registry;

pub use access::{AllowedHosts, ApiTokens, Authority};
pub use auth::{Access, AccessPolicy};
pub use events::commit_track;
pub use submit::{idempotency_key, MAX_IDEMPOTENCY_KEY_LEN, MAX_SUBMIT_BODY_BYTES};
pub use validate::{
    validate_event_id, validate_track, ListQuery, PageQuery, TrackFields, ValidTrack,
};

/// Shared state of the API handlers.
#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    pub executor: ExecutorHandle,
    /// The configured tokens (replaced on reload).
    pub tokens: Registry,
    pub timings: Timings,
    /// The API's tokens and accepted `Host` names (replaced on reload).
    pub access: Access,
    /// Bounds track requests waiting on the executor.
    pub writes: Arc<Semaphore>,
    /// The Apple client, for submitting requests through the daemon.
    pub apple: Option<crate::apple::AppleClient>,
    /// Recorded into by the handlers and rendered on `/metrics`.
    pub metrics: crate::metrics::Metrics,
    /// `[push]` is configured: the status page shows the outbox.
    pub push_configured: bool,
    /// This instance's id and `[store] lease_ttl` when it runs among others on one database;
    /// `None` when it runs alone (SQLite). Shown by `/v1/instances`, `/metrics` and `/`.
    pub cluster: Option<crate::cluster::ClusterInfo>,
}

impl ApiState {
    /// The lease TTL that tells live instances: `[store] lease_ttl`, else its default.
    pub(crate) fn lease_ttl(&self) -> std::time::Duration {
        self.cluster
            .as_ref()
            .map_or(crate::cluster::DEFAULT_LEASE_TTL, |c| c.lease_ttl)
    }
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
    let api = Router::new()
        .route("/v1/events", post(events::track).get(events::list_events))
        .route("/v1/events/{event_id}", get(events::get_event))
        .route("/v1/changes", get(feed::list_changes))
        .route("/v1/tokens", get(tokens::list_tokens))
        .route("/v1/instances", get(instances::list_instances))
        .route(
            "/v1/tokens/{token}/requests/{kind}",
            post(submit::submit_request),
        )
        .route("/v1/tokens/{token}/sync", post(syncs::request_sync))
        .route(
            "/v1/tokens/{token}/assets",
            tokens::mirror_route(MirrorKind::Assets),
        )
        .route(
            "/v1/tokens/{token}/assignments",
            tokens::mirror_route(MirrorKind::Assignments),
        )
        .route(
            "/v1/tokens/{token}/users",
            tokens::mirror_route(MirrorKind::Users),
        )
        .route("/v1/syncs", get(syncs::list_syncs))
        .route("/v1/tokens/{token}/licences", get(push::licences))
        .route("/v1/push", get(push::status))
        .route("/v1/push/replay", post(push::replay))
        // A route layer wraps the routes added before it: every `/v1` route needs the bearer.
        .route_layer(axum::middleware::from_fn_with_state(
            (state.access.clone(), access::Guarded::Api),
            auth::require_access,
        ));
    // The status page shows token names, eventIds and Apple's messages: behind the token like
    // `/v1`, also as HTTP Basic so a browser can prompt (no `?token=`: see `status`).
    let page = Router::new()
        .route("/", get(status::status_page))
        .route_layer(axum::middleware::from_fn_with_state(
            (state.access.clone(), access::Guarded::StatusPage),
            auth::require_access,
        ));
    let open = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(health::metrics));
    Router::new()
        .merge(api)
        .merge(page)
        .merge(open)
        // Outermost, so it runs first on every route and on unknown paths.
        .layer(axum::middleware::from_fn_with_state(
            state.access.clone(),
            auth::require_host,
        ))
        .with_state(state)
}
