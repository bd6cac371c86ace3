//! The local API's access layers (README "Security"), applying the rules of [`super::access`]:
//! [`require_host`] wraps every route (`/healthz` and `/metrics` too: a DNS-rebinding page
//! must not read them either), [`require_access`] the `/v1` routes and the status page. The
//! tokens and hosts sit behind [`Access`], so a configuration reload can replace them.

use std::sync::{Arc, RwLock};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::access::{self, AllowedHosts, ApiTokens, Authority, Guarded, Refusal};
use super::HttpError;

/// What the layers check against.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    pub tokens: ApiTokens,
    pub hosts: AllowedHosts,
}

/// The current [`AccessPolicy`], shared by the layers and replaced on reload.
#[derive(Debug, Clone)]
pub struct Access(Arc<RwLock<Arc<AccessPolicy>>>);

impl Access {
    pub fn new(policy: AccessPolicy) -> Access {
        Access(Arc::new(RwLock::new(Arc::new(policy))))
    }

    pub fn current(&self) -> Arc<AccessPolicy> {
        // A poisoned lock still holds a whole policy (it is replaced in one assignment).
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn replace(&self, policy: AccessPolicy) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
    }
}

/// A refused request: the JSON error, with the challenge a 401 must carry (Basic on the
/// status page, so a browser prompts for the token; Bearer elsewhere, so none does).
fn refuse(r: Refusal, route: Option<Guarded>, request: &Request) -> Response {
    // Method, path and why; never a header value (an Authorization may be a near-miss token).
    tracing::info!(
        status = r.status().as_u16(),
        code = r.code(),
        method = %request.method(),
        path = request.uri().path(),
        "local API request refused"
    );
    let mut response = HttpError::new(r.status(), r.code(), r.to_string()).into_response();
    if r.status() == axum::http::StatusCode::UNAUTHORIZED {
        let challenge = match route {
            Some(Guarded::StatusPage) => "Basic realm=\"vpp-reconciler\", charset=\"UTF-8\"",
            _ => "Bearer realm=\"vpp-reconciler\"",
        };
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
    }
    response
}

/// Middleware on the whole router: 421 unless `Host` is loopback or in `daemon.api_hosts`.
/// The accepted authority rides along for the Origin check.
pub(super) async fn require_host(
    State(access): State<Access>,
    mut request: Request,
    next: Next,
) -> Response {
    let policy = access.current();
    match access::check_host(request.headers(), request.uri(), &policy.hosts) {
        Ok(a) => {
            request.extensions_mut().insert(a);
            next.run(request).await
        }
        Err(r) => refuse(r, None, &request),
    }
}

/// Middleware on the guarded routes: credentials (401), then for writes the origin (403),
/// the read-only token (403) and the body type (415).
pub(super) async fn require_access(
    State((access, route)): State<(Access, Guarded)>,
    request: Request,
    next: Next,
) -> Response {
    let policy = access.current();
    let Some(host) = request.extensions().get::<Authority>().cloned() else {
        // require_host wraps every route; without it nothing is let through.
        return refuse(Refusal::NoHost, Some(route), &request);
    };
    match access::check_request(
        request.method(),
        request.headers(),
        &host,
        route,
        &policy.tokens,
    ) {
        Ok(_) => next.run(request).await,
        Err(r) => refuse(r, Some(route), &request),
    }
}
