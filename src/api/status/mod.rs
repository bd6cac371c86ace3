//! `GET /`: the status page for people (README "Using it"). Server-rendered HTML with inline
//! CSS and an inline SVG chart; no JavaScript at all, refreshed by `<meta http-equiv=refresh>`.
//!
//! The handler reads one [`StatusSnapshot`](crate::store::status::StatusSnapshot) from the
//! store and hands it to [`render`], a pure function of the snapshot and `now` (every time
//! shown is relative to that `now`), so the page is unit-tested without a daemon. Among several instances (or whenever the lease
//! tables hold rows) the handler also reads a [`ClusterView`], from which [`render`] adds an
//! "Instances" section and a holder column to the tokens table (their times relative to the
//! database's clock). Every value that comes from data (token names, instance ids, Apple's
//! error messages, sync errors, ...) goes through [`format::escape_html`].
//!
//! Access: the page needs the API token like `/v1` (see [`super::router`]), either as
//! `Authorization: Bearer` or as the password of HTTP Basic (any user name): a 401 here carries
//! `WWW-Authenticate: Basic`, so a browser prompts for it. Only this read-only page takes Basic
//! (a browser replays Basic credentials on cross-site requests, which must never authorise a
//! write), and the read-only token is accepted too. There is deliberately no `?token=`
//! alternative: a query string ends up in browser history, proxy logs and the page's own
//! refresh URL.
//!
//! Files: the handler and the page's inputs here, [`render`] (`render.rs`: the page and its
//! sections), the SVG chart (`chart.rs`), value formatting (`format.rs`), tests (`tests.rs`).

use std::collections::HashSet;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::{ApiState, HttpError};
use crate::cluster::ClusterView;
use crate::time::Timestamp;

mod chart;
mod format;
mod render;

pub use render::render;

/// Seconds between automatic reloads of the page.
pub const REFRESH_SECS: u32 = 30;

pub(super) async fn status_page(State(state): State<ApiState>) -> Result<Response, HttpError> {
    let now = Timestamp::now();
    let configured: HashSet<String> = state.tokens.names().into_iter().collect();
    let mut snapshot = state.store.status_snapshot(now).await?;
    // A token removed by a reload stays in the table; the page shows the configured ones.
    snapshot.tokens.retain(|t| configured.contains(&t.name));
    if !state.push_configured {
        snapshot.push = None;
    }
    let view = state.store.cluster_view(state.lease_ttl()).await?;
    let me = state.cluster.as_ref().map(|c| c.me.as_str());
    let cluster = (me.is_some() || !view.is_empty()).then_some(Cluster { view: &view, me });
    Ok((
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            // No script, no external resource: the page needs inline CSS and nothing else.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; img-src data:; \
                 form-action 'none'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        render(&snapshot, now, cluster),
    )
        .into_response())
}

/// What the page shows of the cluster.
#[derive(Clone, Copy, Debug)]
pub struct Cluster<'a> {
    pub view: &'a ClusterView,
    /// This instance's id, when it runs among others.
    pub me: Option<&'a str>,
}

#[cfg(test)]
mod tests;
