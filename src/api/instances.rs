//! `GET /v1/instances`: the instances on this database, which are live and which tokens each
//! holds, and which of them answers (`me`, `null` when this daemon runs alone).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::{ApiState, HttpError};

pub(super) async fn list_instances(State(state): State<ApiState>) -> Result<Response, HttpError> {
    let view = state.store.cluster_view(state.lease_ttl()).await?;
    let me = state.cluster.as_ref().map(|c| c.me.as_str());
    Ok(Json(json!({ "instances": view.instances, "me": me })).into_response())
}
